"""Engine-independent pieces of fork/join: options, incremental decoding, trace, plans."""
