"""Generated protobuf and gRPC code of the federation protocol (see ``README.md``)."""
