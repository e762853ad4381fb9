"""The run spec: every setting defined once (``schema``), a composed config turned into one checked ``RunSpec``
(``build``), and the keys that name a point (``identity``)."""
