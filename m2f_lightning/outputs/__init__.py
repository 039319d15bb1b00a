"""What a run writes: prediction files in the official formats, overlays, the HTML
evaluation report."""
