## pbhw's clock constraint template, filled by pbhw.core.devices.clock_sdc() for `pbhw generate`
## (<name>.sdc beside the Verilog): {top} is the top module, {clock} its clock port, {clock_mhz}
## the config's hardware.clock_mhz and {period_ns} 1000 / clock_mhz. Lines starting with "##"
## are not copied.
# Clock constraint for {top} ({clock_mhz} MHz), from hardware.clock_mhz
create_clock -name {clock} -period {period_ns} [get_ports {clock}]
