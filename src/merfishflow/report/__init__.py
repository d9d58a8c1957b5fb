"""The QC report: one self-contained HTML page per experiment (:func:`merfishflow.report.qc.build_report`)."""
