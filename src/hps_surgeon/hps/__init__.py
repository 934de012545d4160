"""The HPS side: HPS_TRT's contract, HugeCTR's table folders and config, and lookups that serve them
(`reference` on the CPU, `native` through the CUDA plugin library)."""
