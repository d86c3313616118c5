"""Tests for pbhw.core.devices: the shipped device files load, bad names and files are refused."""

import pytest

from pbhw.core.config import ConfigError
from pbhw.core.devices import RESOURCES, clock_sdc, count_cells, known_devices, load_device


def test_known_devices_lists_shipped_files():
    assert {"ecp5-85k", "ice40-up5k", "xc7a35t"} <= set(known_devices())


@pytest.mark.parametrize("name", ["ecp5-85k", "ice40-up5k", "xc7a35t"])
def test_every_shipped_device_loads(name):
    device = load_device(name)
    assert device.name == name
    assert set(device.resources) == set(RESOURCES)
    assert all(v > 0 for v in device.resources.values())
    assert device.resources["bram_bits"] % device.block_bits == 0 or name == "ice40-up5k"


def test_ecp5_85k_matches_the_datasheet():
    d = load_device("ecp5-85k")
    assert (d.family, d.synth_command, d.pnr_tool) == ("ecp5", "synth_ecp5", "nextpnr-ecp5")
    assert dict(d.resources) == {
        "lut": 83640,
        "ff": 83640,
        "dsp": 156,
        "bram_bits": 208 * 18432,
        "io": 205,
    }
    assert d.multiplier_widths == (18, 18)
    assert d.multiplier_primitive == "MULT18X18D"
    assert "--85k" in d.pnr_args
    assert d.clock_mhz == 100.0


def test_ice40_up5k_counts_ebr_and_spram():
    d = load_device("ice40-up5k")
    assert d.resources["dsp"] == 8
    assert d.resources["bram_bits"] == 30 * 4096 + 4 * 256 * 1024
    assert d.multiplier_widths == (16, 16)
    assert d.multiplier_primitive is None
    assert d.synth_args == ("-dsp",)


def test_xilinx_has_no_place_and_route():
    d = load_device("xc7a35t")
    assert d.pnr_tool is None and d.pnr_out_of_context_args is None
    assert d.multiplier_widths == (25, 18)
    assert d.lut_inputs == 6


def test_load_device_wrong_name_lists_known():
    with pytest.raises(ConfigError, match=r"unknown device 'ecp5-12k'; known: ecp5-85k, "):
        load_device("ecp5-12k")


@pytest.mark.parametrize("name", ["", "../pyproject", "constraints/ecp5-85k"])
def test_load_device_wrong_path_like_names(name):
    with pytest.raises(ConfigError):
        load_device(name)


def test_load_device_wrong_file_names_the_key(tmp_path):
    text = load_device("ecp5-85k").path.read_text()
    (tmp_path / "bad.toml").write_text(
        text.replace('name = "ecp5-85k"', 'name = "bad"').replace("dsp = 156", "dsp = -1")
    )
    with pytest.raises(ConfigError, match=r"bad.toml: resources.dsp must be a positive integer"):
        load_device("bad", tmp_path)


def test_load_device_wrong_synth_command(tmp_path):
    text = load_device("ecp5-85k").path.read_text()
    (tmp_path / "ecp5-85k.toml").write_text(text.replace('"synth_ecp5"', '"synth_gowin"'))
    with pytest.raises(ConfigError, match=r"synth.command must be one of"):
        load_device("ecp5-85k", tmp_path)


def test_load_device_wrong_multiplier_primitive(tmp_path):
    text = load_device("ecp5-85k").path.read_text()
    (tmp_path / "ecp5-85k.toml").write_text(text.replace('"MULT18X18D"', '"DSP48E1"'))
    with pytest.raises(
        ConfigError, match=r"multiplier.primitive must be one of \('MULT18X18D',\), not 'DSP48E1'"
    ):
        load_device("ecp5-85k", tmp_path)
    (tmp_path / "ecp5-85k.toml").write_text(text.replace("widths = [18, 18]", "widths = [25, 18]"))
    with pytest.raises(ConfigError, match=r"multiplier.widths must be at most 18 bits"):
        load_device("ecp5-85k", tmp_path)


def test_load_device_clock_pin(tmp_path):
    assert load_device("ecp5-85k").pnr_clock_pin == "G2"
    assert load_device("ice40-up5k").pnr_clock_pin is None
    text = load_device("ecp5-85k").path.read_text()
    (tmp_path / "ecp5-85k.toml").write_text(text.replace('clock_pin = "G2"', 'clock_pin = "G2;"'))
    with pytest.raises(ConfigError, match=r"pnr.clock_pin must be a package pin name"):
        load_device("ecp5-85k", tmp_path)
    ice = load_device("ice40-up5k").path.read_text()
    (tmp_path / "ice40-up5k.toml").write_text(ice.replace("[pnr]", '[pnr]\nclock_pin = "35"'))
    with pytest.raises(ConfigError, match=r"pnr.clock_pin is only supported for nextpnr-ecp5"):
        load_device("ice40-up5k", tmp_path)


def test_load_device_name_must_match_file(tmp_path):
    (tmp_path / "other.toml").write_text(load_device("ecp5-85k").path.read_text())
    with pytest.raises(ConfigError, match=r"name must match the file name 'other'"):
        load_device("other", tmp_path)


def test_count_cells_uses_first_matching_pattern():
    table = {"lut": {"LUT4": 1, "CCU2C": 2}, "ff": {"SB_DFF*": 1}}
    cells = {"LUT4": 10, "CCU2C": 3, "SB_DFFE": 4, "SB_DFF": 1, "MULT18X18D": 2}
    assert count_cells(cells, table) == {"lut": 16, "ff": 5}


def test_clock_sdc_states_the_period():
    assert clock_sdc(100.0, "top") == (
        "# Clock constraint for top (100 MHz), from hardware.clock_mhz\n"
        "create_clock -name clk -period 10.000 [get_ports clk]\n"
    )
    assert "-name sys_clk -period 13.333 [get_ports sys_clk]" in clock_sdc(75.0, "t", "sys_clk")


def test_clock_sdc_wrong_frequency():
    with pytest.raises(ConfigError, match="clock_mhz must be positive"):
        clock_sdc(0, "top")
