"""Applications: the ``pyskim`` command (:mod:`.cli`), ``pyskim demo``, and Caffe's and pyskim's
tools, each a ``main(argv=None)``. Library code never imports this package."""
