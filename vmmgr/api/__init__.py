"""gRPC servicers: validate, translate proto <-> domain, call services. No logic here."""
