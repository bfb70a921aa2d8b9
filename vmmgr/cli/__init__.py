"""The `vmmgr` command line: a gRPC client like any other."""
