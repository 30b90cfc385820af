"""Format layers: read tensor headers without touching data, and write tensors as a stream."""
