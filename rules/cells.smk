# Cell segmentation per tile, then spots to cells and the cell x gene counts.
rule segment:
    """Segment one tile's cells (seeded 3D watershed of the round-0 fiducial) into a versioned mask file."""
    input:
        fiducial=PIPELINE.segment_input(),
        placement=PIPELINE.global_registration_marker(),
    output:
        PIPELINE.cell_masks(),
    params:
        segmentation=PIPELINE.segmentation_params(),
        # The neighbours' fiducials are read for context; register_global,
        # an input above, already depends on all of them.
        tiles=lambda wildcards: PIPELINE.segment_context_tiles(wildcards.tile),
    log:
        PIPELINE.log("segment", "{tile}"),
    benchmark:
        PIPELINE.benchmark("segment", "{tile}"),
    resources:
        mem_mb=segment_mem_mb,
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/segment.py"


rule assign:
    """Merge cells across tiles, give every spot its cell and count cell x gene (10x mtx, AnnData)."""
    input:
        masks=PIPELINE.all_cell_masks(),
        spots=PIPELINE.filtered_spots,
    output:
        **PIPELINE.assign_outputs(),
    params:
        tiles=PIPELINE.experiment.tiles,
        min_shared_fraction=config["assignment"]["min_shared_fraction"],
        expand_um=config["assignment"]["expand_um"],
    log:
        PIPELINE.log("assign", "assign"),
    benchmark:
        PIPELINE.benchmark("assign", "assign"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/assign.py"
