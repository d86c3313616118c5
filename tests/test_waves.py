"""``pbhw verify --waves FILE``: the run again on the compiled harness built with tracing, dumped
to a VCD or FST file.

The small three-stage network of tests/test_harness.py (its fixture): the untraced harness build
is shared with that module, and the new builds are the harness with ``--trace`` (VCD) and with
``--trace-fst``. The planted mismatch compares the unchanged RTL with the golden model of a
changed config, so it needs no other build.
"""

import json
import re
from pathlib import Path

import pytest
import test_harness
from click.testing import CliRunner

from pbhw.cli import main
from pbhw.core.config import load
from pbhw.core.datasets import load as load_dataset
from pbhw.core.errors import UserError
from pbhw.core.plan import derive_plan
from pbhw.tools.toolchain import ToolError
from pbhw.tools.verify import (
    WAVES_MARGIN_SAMPLES,
    check_waves_file,
    decode_results,
    golden_epochs,
    verify_epochs,
    waves_window,
)
from rtl_gen.design import build_design
from rtl_gen.generate import top_name

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml"
TRAIN = test_harness.TRAIN
#: The sets of tests/test_harness.py's small network (a module-scoped fixture).
small = test_harness.small


def read_vcd(path: Path):
    """The header of a VCD file (timescale; the scopes and, per variable name, the identifier
    codes in order of declaration) and its value changes ``(time, code, value)``."""
    text = path.read_text()
    head, _, body = text.partition("$enddefinitions")
    timescale = re.search(r"\$timescale\s+(.*?)\s+\$end", head, re.S)[1]
    scopes = re.findall(r"\$scope\s+\w+\s+(\S+)\s+\$end", head)
    codes: dict[str, list[str]] = {}
    for code, name in re.findall(
        r"\$var\s+\w+\s+\d+\s+(\S+)\s+(\S+)(?:\s+\[[^\]]*\])?\s+\$end", head
    ):
        codes.setdefault(name, []).append(code)
    changes, time = [], None
    for token in body.split("\n"):
        token = token.strip()
        if not token or token.startswith("$"):
            continue
        if token[0] == "#":
            time = int(token[1:])
        elif token[0] in "br":
            value, code = token[1:].split()
            changes.append((time, code, int(value.replace("x", "0").replace("z", "0"), 2)))
        else:
            changes.append((time, token[1:], int(token[0].replace("x", "0"))))
    return timescale, scopes, codes, changes


def values_at(changes, codes, time):
    """The value of each code at ``time`` (its last change at or before it)."""
    out = {}
    for t, code, value in changes:
        if t > time:
            break
        if code in codes:
            out[code] = value
    return out


def test_the_window_is_the_whole_short_run_else_around_the_mismatch():
    margin = WAVES_MARGIN_SAMPLES * 50
    assert waves_window(20_000, 50, 123) == (0, 20_000)
    assert waves_window(20_000, 50, None) == (0, 20_000)
    assert waves_window(100_000, 50, 30_000) == (30_000 - margin, 30_000 + margin + 1)
    assert waves_window(100_000, 50, None) == (100_000 - 2 * margin, 100_000)
    assert waves_window(100_000, 50, 10) == (0, 10 + margin + 1)
    assert waves_window(100_000, 50, 99_999) == (99_999 - margin, 100_000)


def test_a_short_run_is_dumped_whole_with_the_ports_and_the_stages(small, tmp_path):
    out, waves = tmp_path / "verify.json", tmp_path / "run.vcd"
    sets = [arg for s in small for arg in ("--set", s)]
    run = CliRunner().invoke(
        main,
        ["verify", str(EXAMPLE), "--epochs", "1", *sets, "--waves", str(waves), "--json", str(out)],
    )
    assert run.exit_code == 0, run.output
    got = json.loads(out.read_text())
    assert got["bit_exact"]
    assert got["waves"] == {"file": str(waves), "from_cycle": 0, "to_cycle": got["cycles"]}
    assert f"wrote {waves}: the waves of cycles [0, {got['cycles']:,})" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.vcd", "verify.json"]

    timescale, scopes, codes, changes = read_vcd(waves)
    assert timescale
    assert top_name(load(EXAMPLE, small)) in scopes, scopes
    for port in ("clk", "rst", "samples__valid", "samples__ready", "results__payload", "idle"):
        assert port in codes, port
    # The stages' internals with their Amaranth names, not only the top's ports.
    assert len(codes["clk"]) > 1
    assert len(scopes) > 4
    clk = codes["clk"][0]
    rising = [t for t, code, value in changes if code == clk and value == 1]
    assert len(rising) == got["cycles"]  # one rising edge per cycle of the window
    assert rising[0] == 5 and rising[-1] == 10 * (got["cycles"] - 1) + 5
    # Every sample is accepted in the dump (a handshake at a cycle's sampling point, 10c).
    valid, ready = codes["samples__valid"][0], codes["samples__ready"][0]
    accepted = 0
    state = {}
    times = sorted({t for t, _, _ in changes})
    at = 0
    for t in times:
        while at < len(changes) and changes[at][0] == t:
            state[changes[at][1]] = changes[at][2]
            at += 1
        if t % 10 == 0 and state.get(valid) and state.get(ready):
            accepted += 1
    net_stages = 3
    assert accepted == TRAIN + 2 * net_stages - 1


def test_a_mismatch_is_in_the_middle_of_its_window(small, tmp_path):
    normal = load(EXAMPLE, small)
    changed = load(EXAMPLE, (*small, "formats.activation.rounding='floor'"))
    data = load_dataset(normal.train.dataset)
    want = golden_epochs(derive_plan(normal), data, 1)  # what the unchanged RTL computes
    other = golden_epochs(derive_plan(changed), data, 1)
    differs = [
        k
        for k in range(TRAIN)
        if other.predictions[k] != want.predictions[k]
        or list(other.loss_errors[k]) != list(want.loss_errors[k])
    ]
    assert differs, "the planted change alters no result"
    k = differs[0]
    design = build_design(normal)
    waves = tmp_path / "mismatch.vcd"
    found = verify_epochs(
        changed, epochs=1, rtl_design=design, localise=False, waves=waves, waves_whole=0
    )
    assert not found.bit_exact
    window = found.waves
    margin = WAVES_MARGIN_SAMPLES * design.network.predicted_cycles_per_sample
    # The window reaches `margin` cycles past the mismatch's, and as far before it as the run
    # allows; at that cycle the RTL hands over the differing result.
    cycle = window.to_cycle - margin - 1
    assert window.file == str(waves)
    assert window.from_cycle == max(0, cycle - margin)
    _, _, codes, changes = read_vcd(waves)
    valid, ready, payload = (
        codes[n][0] for n in ("results__valid", "results__ready", "results__payload")
    )
    handed = []
    for c in range(window.from_cycle, cycle + 1):
        at = values_at(changes, {valid, ready, payload}, 10 * c)
        if at[valid] and at[ready]:
            handed.append((c, at[payload]))
    assert handed[-1][0] == cycle
    [(label, prediction, delta)] = decode_results(design.network, [handed[-1][1]])
    assert (label, prediction, delta) == (
        want.labels[k],
        want.predictions[k],
        [int(v) for v in want.loss_errors[k]],
    )
    assert (prediction, delta) != (other.predictions[k], [int(v) for v in other.loss_errors[k]])
    if window.from_cycle == 0:
        assert len(handed) == k + 1  # result k is the (k + 1)-th handed over


def test_an_fst_file_of_the_end_of_a_run(small, tmp_path):
    waves = tmp_path / "run.fst"
    try:
        result = verify_epochs(load(EXAMPLE, small), epochs=1, waves=waves, waves_whole=1000)
    except ToolError as error:
        if "LZ4" not in str(error):
            raise
        pytest.skip(str(error))
    assert result.bit_exact, result.mismatch
    margin = WAVES_MARGIN_SAMPLES * result.predicted_cycles_per_sample
    window = result.waves
    assert (window.from_cycle, window.to_cycle) == (result.cycles - 2 * margin, result.cycles)
    # FST's header block: type 0, length 329, then the first and last time (big-endian).
    head = waves.read_bytes()[:25]
    assert (head[0], int.from_bytes(head[1:9], "big")) == (0, 329)
    first, last = int.from_bytes(head[9:17], "big"), int.from_bytes(head[17:25], "big")
    assert (first, last) == (10 * window.from_cycle, 10 * (window.to_cycle - 1) + 5)
    try:
        import pywellen  # Surfer's reader, when installed
    except ImportError:
        return
    read = pywellen.Waveform(str(waves))
    names = {v.full_name for v in read.all_vars()}
    assert "TOP.clk" in names and f"TOP.{top_name(load(EXAMPLE, small))}.samples__valid" in names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "1", "--waves", "{tmp}/run.txt"], "--waves must name a file ending in"),
        (["--epochs", "1", "--waves", "{tmp}/run.fsdb"], "--waves must name a file ending in"),
        (["--samples", "1", "--waves", "{tmp}/file/run.vcd"], "--waves '{tmp}/file/run.vcd'"),
        (["--epochs", "1", "--waves", "{tmp}/file/run.fst"], "--waves '{tmp}/file/run.fst'"),
        (
            ["--samples", "1", "--waves", "{tmp}/run.vcd", "--simulator", "icarus"],
            "--waves runs on the Verilator harness, not --simulator icarus",
        ),
    ],
)
def test_bad_waves_arguments_are_one_error_line_before_any_work(
    tmp_path, monkeypatch, args, message
):
    import pbhw.cli.commands as commands

    def started(*args, **kwargs):
        raise AssertionError("work started")

    for name in ("run_verify", "run_verify_epochs"):
        monkeypatch.setattr(commands, name, started)
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    run = CliRunner().invoke(main, ["verify", str(EXAMPLE), *args])
    assert run.exit_code == 2, run.output
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and message.format(tmp=tmp_path) in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_library_checks_the_file_too(tmp_path):
    with pytest.raises(UserError, match="--waves must name a file ending in .fst or .vcd"):
        check_waves_file(tmp_path / "run.fsdb")
    assert check_waves_file(tmp_path / "run.fst") == tmp_path / "run.fst"
