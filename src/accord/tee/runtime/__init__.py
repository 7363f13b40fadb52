"""The tee runtime: processes, sockets, transports, hosts, progress and run state.

* :mod:`~accord.tee.runtime.enclave` — the simulated backend's enclave process;
* :mod:`~accord.tee.runtime.measurement` and :mod:`~accord.tee.runtime.platform_key` —
  what that process measures and signs with;
* :mod:`~accord.tee.runtime.host` — the host's handle on its enclave (a process, or the
  session in this process for tests);
* :mod:`~accord.tee.runtime.transport` — TCP links between the parties' hosts;
* :mod:`~accord.tee.runtime.party` — one party's whole run, with
  :mod:`~accord.tee.runtime.settings`, :mod:`~accord.tee.runtime.inputs`,
  :mod:`~accord.tee.runtime.relay`, :mod:`~accord.tee.runtime.outputs`, and the peer
  link contract :mod:`~accord.tee.runtime.links` (TCP or in memory);
* :mod:`~accord.tee.runtime.bucketed_host`, :mod:`~accord.tee.runtime.runstate`,
  :mod:`~accord.tee.runtime.progress` — runs larger than memory.

This ``__init__`` imports nothing: the enclave process loads it, and it is measured.
"""
