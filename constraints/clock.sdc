# pbhw clock constraint template: `pbhw generate` fills it with pbhw.core.devices.clock_sdc().
# {clock}: the top level's clock port; {period_ns}: 1000 / hardware.clock_mhz.
create_clock -name {clock} -period {period_ns} [get_ports {{{clock}}}]
