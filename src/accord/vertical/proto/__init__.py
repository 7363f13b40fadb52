"""Generated protobuf and gRPC code of the vertical protocol (see ``README.md``)."""
