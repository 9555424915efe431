"""Generated protobuf modules of the cutalign.v1 wire format (see proto/README.md)."""
