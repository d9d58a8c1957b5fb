# Exports made on request (config key exports): TIFF hyperstacks, SpaceTx tile sets, the starfish codebook.
rule export_imagej:
    input:
        PIPELINE.export_inputs(),
    output:
        PIPELINE.export_tiff_pattern("imagej"),
    log:
        PIPELINE.log("export", "{tile}_{what}_imagej"),
    benchmark:
        PIPELINE.benchmark("export", "{tile}_{what}_imagej"),
    wildcard_constraints:
        what="readouts|fiducials|all",
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/export_tiff.py"


rule export_ome:
    input:
        PIPELINE.export_inputs(),
    output:
        PIPELINE.export_tiff_pattern("ome"),
    log:
        PIPELINE.log("export", "{tile}_{what}_ome"),
    benchmark:
        PIPELINE.benchmark("export", "{tile}_{what}_ome"),
    wildcard_constraints:
        what="readouts|fiducials|all",
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/export_tiff.py"


rule export_spacetx:
    input:
        PIPELINE.export_inputs(),
    output:
        PIPELINE.export_spacetx_pattern(),
    log:
        PIPELINE.log("export", "{tile}_spacetx"),
    benchmark:
        PIPELINE.benchmark("export", "{tile}_spacetx"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/export_spacetx.py"


rule export_starfish_codebook:
    input:
        PIPELINE.calibrations_marker,
    output:
        PIPELINE.export_codebook_path,
    log:
        PIPELINE.log("export", "starfish_codebook"),
    benchmark:
        PIPELINE.benchmark("export", "starfish_codebook"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/export_codebook.py"


rule export_ome_zarr:
    input:
        PIPELINE.interop_inputs(),
    output:
        PIPELINE.export_ome_zarr_pattern(),
    params:
        pyramid_max_px=PIPELINE.config["exports"]["pyramid_max_px"],
    log:
        PIPELINE.log("export", "{tile}_ome_zarr"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/export_ome_zarr.py"


rule export_spatialdata:
    input:
        PIPELINE.spatialdata_inputs(),
    output:
        directory(PIPELINE.export_spatialdata_path),
    log:
        PIPELINE.log("export", "spatialdata"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/export_spatialdata.py"
