"""The demo: the whole station on simulated hardware, driven by a scenario (``mwc demo``).

- :mod:`sim.demo.scenario` — the scenario TOML model and its event schedule;
- :mod:`sim.demo.services` — the processes around the station (Mosquitto, ocpp_server, the
  grid signal publisher) and their clean shutdown;
- :mod:`sim.demo.runner` — orchestration: simulator + station in lockstep on one clock;
- :mod:`sim.demo.live` — the live lines; :mod:`sim.demo.report` — verdicts, plots, report.
"""
