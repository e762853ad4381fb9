"""The results: the store (``results``), the one place a row is assembled (``row``), request streams' side tables
(``stream``), and where a row was measured (``provenance``)."""
