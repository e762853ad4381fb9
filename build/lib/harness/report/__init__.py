"""Reading results back: ``astra-plot`` (``plot``), ``astra-report`` beside the paper (``paper_report``), and the
figures' shared style (``style``: one colour per method)."""
