# Step train-lightgbm: Train one LightGBM model with the hyperparameters it is given.
# Inputs arrive only as dispatch meta (the caravan job contract, see caravan.step); payload is forbidden.
variable "image" {
  type    = string
  default = "caravan:dev"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "train-lightgbm" {
  type        = "batch"
  datacenters = var.datacenters

  parameterized {
    payload       = "forbidden"
    meta_required = ["caravan_output", "caravan_artifact_id", "caravan_identity", "caravan_inputs",
                     "caravan_params", "caravan_run_id", "caravan_job"]
  }

  group "step" {
    # Retrying is the pipeline's decision (luigi), not Nomad's: a failed step fails its task visibly.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "step" {
      driver = "docker"

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "jobs.train_lightgbm"]
      }

      env {
        CARAVAN_STEP_EXECUTOR = "nomad"
      }

      resources {
        cpu    = 2000
        memory = 8192
      }
    }
  }
}
