"""Fixtures every test folder shares. Being at the top of tests/, this file also puts
tests/ on sys.path (pytest's default import mode), so the helpers beside it
(gitrepos, daemonproc, fleetservers, logsamples, webkit) import by their names."""
