"""Use cases: vms, hosts, devices, images, operations, events. Pure of gRPC and of drivers."""
