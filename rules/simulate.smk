# A simulated experiment (config simulation.enabled): raw_data/ plus ground_truth/.
if PIPELINE.simulated:

    rule simulate:
        output:
            **PIPELINE.simulation_outputs(),
            ground_truth=directory(str(PIPELINE.paths.ground_truth)),
        params:
            simulation=config["simulation"]["params"],
        log:
            PIPELINE.log("simulate", "simulate"),
        benchmark:
            PIPELINE.benchmark("simulate", "simulate"),
        threads: 4
        group:
            "setup"
        conda:
            "../envs/merfishflow.yaml"
        script:
            "../scripts/simulate.py"
