"""vireid: visible-infrared person re-identification, the library of the pipeline and ``vireid``."""
