"""Image analysis: facts (size, camera, capture time, GPS, colour) read from image bytes.

Pure functions with no filesystem or index dependencies, so they can be tested on
their own and run in a worker thread: ``from gffs.images.analyze import analyze``.
(Nothing is re-exported here: a package attribute named ``analyze`` would shadow
the submodule of the same name.)
"""
