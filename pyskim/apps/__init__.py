"""Applications: the ``pyskim`` command, one table of commands (:mod:`.cli`): Caffe's ``train``/``test``/
``time``/``device_query``, ``pyskim demo``, ``calibrate`` and Caffe's and pyskim's tools, each a module with
``build_parser()`` and ``run(args)``. Library code never imports this package."""
