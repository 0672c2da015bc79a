"""Label Studio's format and API only (a leaf): label-config schema, brush RLE, result JSON, API client, token handling."""
