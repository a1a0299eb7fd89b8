"""pycaffe's surface over the core: ``caffe.Net`` (:mod:`.net`), ``net_spec``, ``coord_map``,
``draw``, ``Classifier``, ``Detector``, ``Timer`` and the ``caffe`` module alias (:mod:`.compat`)."""
