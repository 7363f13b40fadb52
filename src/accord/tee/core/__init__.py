"""The tee core: enclave logic, crypto, sealing, attestation verification, wire formats.

Nothing in this package opens a socket, starts a process or a thread, reads a clock or
touches a file: protocol steps are functions from message to message
(:meth:`accord.tee.core.session.EnclaveSession.call`), randomness is passed in, and the
runtime (:mod:`accord.tee.runtime`) moves the bytes. The one concession is
:mod:`~accord.tee.core.allocator`, which asks the C allocator to return freed memory.
Every module here is measured into the enclave's identity.
"""
