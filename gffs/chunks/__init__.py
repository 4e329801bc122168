"""Content-addressed chunks: encoding (hash, compression) and the chunk store."""
