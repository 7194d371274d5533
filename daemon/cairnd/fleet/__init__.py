"""The fleet (SPEC section 17): several cairnd hosts sharing three existing services.

    NATS JetStream   requests (a work-queue stream), results (a key-value bucket keyed
                     by request id, written once), leases (who owns which session),
                     host heartbeats and session descriptors
    an S3 store      every session log, mirrored as it grows, as create-only parts
    a git remote     every checkpoint's objects and ref (create-only refs/cairnd/*)

One module per concept: `settings` (the [fleet] table), `logstore` (the log mirror),
`remote` (the checkpoint repository and each host's clones), `bus` (NATS: stream,
buckets, submission), `leases` (ownership), `materialise` (a session rebuilt on
this host from the store and the remote), `host` (the daemon's side: intake from the
stream, the spool door, takeover, the hooks sessions call) and `status`.
Without [fleet] none of it is imported by the daemon.
"""
