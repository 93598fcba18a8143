"""The license: file format and signature (format), issuer keys (keys), what counts (counting), metrics."""
