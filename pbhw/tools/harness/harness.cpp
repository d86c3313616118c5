// The compiled harness of `pbhw verify --epochs`: drives a Verilated network from C++.
//
// Built by pbhw/tools/harness/__init__.py with `verilator --cc --exe --build --prefix Vnet`.
// It reads a stimulus file (little-endian uint32 words, written by pbhw.tools.harness):
//
//   magic 'PBHS', version, payload_words, payloads, stages, rows[stages],
//   pauses, (payloads_before, results_before, drained)[pauses],
//   payload words[payloads][payload_words]
//
// streams the payloads into `samples` (with seeded random idle cycles), takes every token of
// `results` (under seeded random back-pressure), records the cycle of every accepted payload, and
// at each pause (after `payloads_before` payloads are accepted and `results_before` results
// taken) waits until the network is quiet (drained: `idle` for the quiet cycles; else no token
// moving on the ports for the settle cycles) and reads every W and V row through the debug port and
// the saturation counters. The trace file it writes is described in docs/verification.md.
//
// Verilator escapes the double underscore of Amaranth's port names: `samples__payload` is the
// member `samples___05Fpayload`.
//
// Arguments are key=value (idle, backpressure, seed, quiet, settle, debug_latency, stall, stimulus,
// trace, and in a build with tracing waves, waves_from, waves_to); arguments starting with '+'
// are Verilator's (e.g. +verilator+rand+reset+2).
//
// Built with `--trace-fst` or `--trace` (Verilator then defines VM_TRACE, and VM_TRACE_FST for
// FST), the harness dumps the cycles in [waves_from, waves_to) to the file `waves`: cycle c's
// inputs are set at time 10c with the clock low, its rising edge is at time 10c + 5.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "Vnet.h"
#include "verilated.h"
#if VM_TRACE
#if VM_TRACE_FST
#include "verilated_fst_c.h"
using WaveFile = VerilatedFstC;
#else
#include "verilated_vcd_c.h"
using WaveFile = VerilatedVcdC;
#endif
#endif

namespace {

constexpr uint32_t STIMULUS_MAGIC = 0x53484250;  // "PBHS"
constexpr uint32_t TRACE_MAGIC = 0x54484250;     // "PBHT"
constexpr uint32_t STIMULUS_VERSION = 1;
constexpr uint32_t TRACE_VERSION = 2;

// A port as 32-bit words, lowest first: scalar ports (CData ... QData) and VlWide<N>.
template <typename T>
struct Port {
    static constexpr size_t words = (sizeof(T) + 3) / 4;
    static void put(T& port, const uint32_t* w) {
        uint64_t v = w[0];
        if (words > 1) v |= static_cast<uint64_t>(w[1]) << 32;
        port = static_cast<T>(v);
    }
    static void get(const T& port, uint32_t* w) {
        const uint64_t v = port;
        w[0] = static_cast<uint32_t>(v);
        if (words > 1) w[1] = static_cast<uint32_t>(v >> 32);
    }
};

template <std::size_t N>
struct Port<VlWide<N>> {
    static constexpr size_t words = N;
    static void put(VlWide<N>& port, const uint32_t* w) {
        for (size_t i = 0; i < N; ++i) port[i] = w[i];
    }
    static void get(const VlWide<N>& port, uint32_t* w) {
        for (size_t i = 0; i < N; ++i) w[i] = port[i];
    }
};

template <typename Member>
using PortOf = Port<std::remove_cv_t<std::remove_reference_t<Member>>>;

using SamplePort = PortOf<decltype(std::declval<Vnet>().samples___05Fpayload)>;
using ResultPort = PortOf<decltype(std::declval<Vnet>().results___05Fpayload)>;
using DebugPort = PortOf<decltype(std::declval<Vnet>().dbg_data)>;
using CounterPort = PortOf<decltype(std::declval<Vnet>().saturation)>;

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "pbhw-harness: error: %s\n", message.c_str());
    std::exit(3);
}

std::vector<uint32_t> read_words(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail("cannot open " + path);
    std::vector<uint32_t> out;
    uint32_t buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 4, 4096, f)) > 0) out.insert(out.end(), buffer, buffer + n);
    std::fclose(f);
    return out;
}

class Harness {
  public:
    Harness(VerilatedContext* ctx, double idle, double backpressure, uint64_t seed)
        : top_(new Vnet{ctx}),
          idle_(idle),
          backpressure_(backpressure),
          idle_rng_(seed),
          ready_rng_(seed + 1) {}

    ~Harness() {
        top_->final();
#if VM_TRACE
        if (waves_) waves_->close();
#endif
    }

    // Dump the cycles in [from, to) to `path` (opened at the first of them).
    void waves(const std::string& path, uint64_t from, uint64_t to) {
#if VM_TRACE
        waves_path_ = path;
        waves_from_ = from;
        waves_to_ = to;
#else
        (void)from;
        (void)to;
        if (!path.empty()) fail("waves= needs a harness built with --trace-fst or --trace");
#endif
    }

    void reset() {
        top_->rst = 1;
        top_->samples___05Fvalid = 0;
        top_->results___05Fready = 0;
        top_->dbg_stage = 0;
        top_->dbg_mem = 0;
        top_->dbg_addr = 0;
        for (int i = 0; i < 2; ++i) clock();
        top_->clk = 0;
        top_->rst = 0;
        top_->eval();
    }

    // One clock cycle: drive after the falling edge, sample the handshakes, rising edge.
    void cycle(bool feed) {
        top_->clk = 0;
        if (!busy_) {
            const bool wait = idle_ > 0 && uniform_(idle_rng_) < idle_;
            if (feed && next_ < payload_count_ && !wait) {
                SamplePort::put(top_->samples___05Fpayload, payloads_ + next_ * SamplePort::words);
                top_->samples___05Fvalid = 1;
                busy_ = true;
            } else {
                top_->samples___05Fvalid = 0;
            }
        }
        const bool ready = !(backpressure_ > 0 && uniform_(ready_rng_) < backpressure_);
        top_->results___05Fready = ready;
        top_->eval();
        dump(0);
        const bool accepted = busy_ && top_->samples___05Fready;
        if (ready && top_->results___05Fvalid) {
            const size_t at = results.size();
            results.resize(at + ResultPort::words);
            ResultPort::get(top_->results___05Fpayload, results.data() + at);
            result_cycles.push_back(cycles);
            last_progress_ = cycles;
        }
        idle_now_ = top_->idle;
        top_->clk = 1;
        top_->eval();
        dump(5);
        if (accepted) {
            taken.push_back(cycles);
            busy_ = false;
            ++next_;
            last_progress_ = cycles;
        }
        ++cycles;
    }

    size_t result_count() const { return results.size() / ResultPort::words; }

    void stream(size_t payloads, size_t results_wanted, uint64_t stall, size_t total) {
        while (next_ < payloads || result_count() < results_wanted) {
            cycle(next_ < payloads);
            if (cycles - last_progress_ > stall)
                fail("no sample taken and no result for " + std::to_string(stall) +
                     " cycles at cycle " + std::to_string(cycles) + " (" +
                     std::to_string(next_) + " payloads sent, " +
                     std::to_string(result_count()) + " results)");
            if ((cycles & 0xFFFFF) == 0)
                std::fprintf(stderr, "pbhw-harness: progress %zu %zu %llu\n", next_, total,
                             static_cast<unsigned long long>(cycles));
        }
    }

    // Until every stage is idle for more than `quiet_cycles` cycles (`idle` holds only once
    // every sample has left: after the drain bubbles).
    void wait_quiet(uint64_t quiet_cycles, uint64_t stall) {
        uint64_t quiet = 0;
        for (uint64_t k = 0; quiet <= quiet_cycles; ++k) {
            if (k > stall) fail("the network did not go quiet at cycle " + std::to_string(cycles));
            cycle(false);
            quiet = idle_now_ ? quiet + 1 : 0;
        }
    }

    // Until no token has moved on the ports for `settle` cycles: with samples in flight the
    // stages stop, each waiting for a token, but `idle` stays low.
    void wait_settled(uint64_t settle) {
        while (cycles - last_progress_ <= settle) cycle(false);
    }

    void read_memories(const std::vector<uint32_t>& rows, uint32_t latency,
                       std::vector<uint32_t>& out) {
        for (size_t s = 0; s < rows.size(); ++s) {
            for (uint32_t mem = 0; mem < 2; ++mem) {
                for (uint32_t r = 0; r < rows[s]; ++r) {
                    top_->dbg_stage = s;
                    top_->dbg_mem = mem;
                    top_->dbg_addr = r;
                    for (uint32_t k = 0; k < latency; ++k) cycle(false);
                    const size_t at = out.size();
                    out.resize(at + DebugPort::words);
                    DebugPort::get(top_->dbg_data, out.data() + at);
                }
            }
        }
        const size_t at = out.size();
        out.resize(at + CounterPort::words);
        CounterPort::get(top_->saturation, out.data() + at);
    }

    void load(const uint32_t* payloads, size_t count) {
        payloads_ = payloads;
        payload_count_ = count;
    }

    std::vector<uint64_t> taken, result_cycles;
    std::vector<uint32_t> results;
    uint64_t cycles = 0;

  private:
    // The signals at time 10 * cycles + offset, if the cycle is in the window.
    void dump(uint64_t offset) {
#if VM_TRACE
        if (waves_path_.empty() || cycles < waves_from_ || cycles >= waves_to_) return;
        if (!waves_) {
            waves_ = std::make_unique<WaveFile>();
            top_->trace(waves_.get(), 99);
            waves_->open(waves_path_.c_str());
            if (!waves_->isOpen()) fail("cannot write " + waves_path_);
        }
        waves_->dump(10 * cycles + offset);
#else
        (void)offset;
#endif
    }

    void clock() {
        top_->clk = 0;
        top_->eval();
        top_->clk = 1;
        top_->eval();
    }

    std::unique_ptr<Vnet> top_;
    double idle_, backpressure_;
    std::mt19937_64 idle_rng_, ready_rng_;
    std::uniform_real_distribution<double> uniform_{0.0, 1.0};
    const uint32_t* payloads_ = nullptr;
    size_t payload_count_ = 0, next_ = 0;
    bool busy_ = false, idle_now_ = false;
    uint64_t last_progress_ = 0;
#if VM_TRACE
    std::unique_ptr<WaveFile> waves_;
    std::string waves_path_;
    uint64_t waves_from_ = 0, waves_to_ = 0;
#endif
};

}  // namespace

int main(int argc, char** argv) {
    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);
#if VM_TRACE
    ctx->traceEverOn(true);
#endif
    double idle = 0, backpressure = 0;
    uint64_t seed = 0, quiet = 0, settle = 0, latency = 0, stall = 0;
    uint64_t waves_from = 0, waves_to = UINT64_MAX;
    std::string stimulus_path, trace_path, waves_path;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg.empty() || arg[0] == '+') continue;
        const size_t eq = arg.find('=');
        if (eq == std::string::npos) fail("argument without '=': " + arg);
        const std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
        if (key == "idle") idle = std::strtod(value.c_str(), nullptr);
        else if (key == "backpressure") backpressure = std::strtod(value.c_str(), nullptr);
        else if (key == "seed") seed = std::strtoull(value.c_str(), nullptr, 10);
        else if (key == "quiet") quiet = std::strtoull(value.c_str(), nullptr, 10);
        else if (key == "settle") settle = std::strtoull(value.c_str(), nullptr, 10);
        else if (key == "debug_latency") latency = std::strtoull(value.c_str(), nullptr, 10);
        else if (key == "stall") stall = std::strtoull(value.c_str(), nullptr, 10);
        else if (key == "stimulus") stimulus_path = value;
        else if (key == "trace") trace_path = value;
        else if (key == "waves") waves_path = value;
        else if (key == "waves_from") waves_from = std::strtoull(value.c_str(), nullptr, 10);
        else if (key == "waves_to") waves_to = std::strtoull(value.c_str(), nullptr, 10);
        else fail("unknown argument " + key);
    }
    const std::vector<uint32_t> s = read_words(stimulus_path);
    size_t at = 0;
    auto next = [&]() -> uint32_t {
        if (at >= s.size()) fail("stimulus file is truncated");
        return s[at++];
    };
    if (next() != STIMULUS_MAGIC || next() != STIMULUS_VERSION)
        fail("not a version 1 stimulus file");
    const uint32_t payload_words = next();
    if (payload_words != SamplePort::words)
        fail("payload words " + std::to_string(payload_words) + ", the model's port has " +
             std::to_string(SamplePort::words));
    const uint32_t payloads = next();
    std::vector<uint32_t> rows(next());
    for (auto& r : rows) r = next();
    const size_t pauses = next();
    std::vector<uint32_t> pause_payloads(pauses), pause_results(pauses), pause_drained(pauses);
    for (size_t k = 0; k < pauses; ++k) {
        pause_payloads[k] = next();
        pause_results[k] = next();
        pause_drained[k] = next();
    }
    if (s.size() - at != static_cast<size_t>(payloads) * payload_words)
        fail("stimulus file has the wrong number of payload words");

    Harness h(ctx.get(), idle, backpressure, seed);
    h.waves(waves_path, waves_from, waves_to);
    h.load(s.data() + at, payloads);
    h.reset();
    std::vector<uint32_t> memories;
    std::vector<uint64_t> pause_cycles;
    const auto start = std::chrono::steady_clock::now();
    for (size_t k = 0; k < pause_payloads.size(); ++k) {
        h.stream(pause_payloads[k], pause_results[k], stall, payloads);
        if (pause_drained[k])
            h.wait_quiet(quiet, stall);
        else
            h.wait_settled(settle);
        pause_cycles.push_back(h.cycles);
        h.read_memories(rows, latency, memories);
        std::fprintf(stderr, "pbhw-harness: pause %zu %zu %llu\n", k + 1, pause_payloads.size(),
                     static_cast<unsigned long long>(h.cycles));
    }

    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    std::fprintf(stderr, "pbhw-harness: done %llu %.6f\n",
                 static_cast<unsigned long long>(h.cycles), seconds.count());

    FILE* f = std::fopen(trace_path.c_str(), "wb");
    if (!f) fail("cannot write " + trace_path);
    auto put = [&](uint32_t v) { std::fwrite(&v, 4, 1, f); };
    auto put64 = [&](uint64_t v) {
        put(static_cast<uint32_t>(v));
        put(static_cast<uint32_t>(v >> 32));
    };
    put(TRACE_MAGIC);
    put(TRACE_VERSION);
    put(ResultPort::words);
    put(DebugPort::words);
    put(CounterPort::words);
    put(static_cast<uint32_t>(h.taken.size()));
    put(static_cast<uint32_t>(h.result_count()));
    put(static_cast<uint32_t>(pause_cycles.size()));
    put64(h.cycles);
    for (uint64_t c : h.taken) put64(c);
    for (uint64_t c : pause_cycles) put64(c);
    for (uint64_t c : h.result_cycles) put64(c);
    std::fwrite(h.results.data(), 4, h.results.size(), f);
    std::fwrite(memories.data(), 4, memories.size(), f);
    if (std::fclose(f) != 0) fail("cannot write " + trace_path);
    return 0;
}
