"""Task data in: fetching (URLs, uploads, cloud, local files), image decoding, tokenising, preparing model input."""
