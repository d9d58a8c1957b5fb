"""One module per pipeline stage: read the datastore, call the algorithms, write markers last.

The algorithms themselves (correction, deconvolution, registration,
stitching, ...) are pure functions in the package's top-level modules; a
stage module only knows where things are on disk and what a marker holds.
"""
