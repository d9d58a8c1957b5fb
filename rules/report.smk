# The QC report: one self-contained HTML page per experiment, also listed in `snakemake --report`.
rule qc_report:
    """Write the QC report (report/qc_report.html): spots, FDR fit, registration, layout, cells, provenance."""
    input:
        PIPELINE.final_products(),
    output:
        report(PIPELINE.qc_report, caption="../report/qc_report.rst", category="Quality control"),
    params:
        tiles=PIPELINE.experiment.tiles,
    log:
        PIPELINE.log("report", "qc_report"),
    benchmark:
        PIPELINE.benchmark("report", "qc_report"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/qc_report.py"
