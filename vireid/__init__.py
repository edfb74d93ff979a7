"""vireid: visible-infrared person re-identification."""
