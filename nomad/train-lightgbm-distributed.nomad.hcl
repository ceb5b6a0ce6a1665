# Step train-lightgbm-distributed: one rank of a LightGBM data-parallel training (TrainRanker --num-machines N > 1).
# Inputs arrive only as dispatch meta (the caravan job contract, see caravan.step); payload is forbidden.
#
# Why N dispatches and not one job with count = N: Nomad cannot set a group's count from dispatch meta (a
# dispatched child is a copy of the parent's task groups as registered; dispatch only merges meta and payload).
# So the executor dispatches this one-allocation job N times, each child with caravan_rank (0..N-1),
# caravan_num_machines (N) and caravan_gang (the gang id and its deadlines). Each allocation gets its own dynamic
# port "lightgbm"; the ranks meet in the artifact store (caravan.ml.distributed), then LightGBM connects them
# all-to-all over TCP on those ports. Rank 0 publishes the model; the others publish nothing.
variable "image" {
  type        = string
  default     = "caravan:dev"
  description = "The project image; caravan publish sets <repository>:<release tag>."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "namespace" {
  type        = string
  default     = "default"
  description = "Nomad namespace: caravan in production, caravan-staging in staging."
}

variable "environment" {
  type        = string
  default     = "dev"
  description = "The environment (production, staging...): the Vault role caravan-<env>-step and the folder secret/data/caravan/<env>/. caravan publish sets the one in effect (CARAVAN_ENVIRONMENT, else derived from the namespace)."
}

variable "cpu" {
  type        = number
  default     = 2000
  description = "CPU (MHz) of one rank."
}

variable "memory" {
  type        = number
  default     = 8192
  description = "Memory (MB) of one rank: its shard of the train split (about 1/N of it as float32, twice while LightGBM bins it) plus the whole validation split."
}

job "train-lightgbm-distributed" {
  type        = "batch"
  namespace   = var.namespace
  datacenters = var.datacenters

  parameterized {
    payload       = "forbidden"
    meta_required = ["caravan_output", "caravan_artifact_id", "caravan_identity", "caravan_inputs",
                     "caravan_params", "caravan_run_id", "caravan_job",
                     "caravan_rank", "caravan_num_machines", "caravan_gang"]
  }

  group "step" {
    # Host networking: LightGBM finds its own rank by matching one of the node's own addresses and its listen port
    # against the machines list, so the task must see the node's address (no bridge, no port mapping).
    network {
      mode = "host"
      port "lightgbm" {}
    }

    # A rank that dies fails the whole gang; re-running one rank alone could never rejoin it. Retrying is the
    # pipeline's decision (luigi), with a new gang.
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
        image        = var.image
        command      = "python"
        args         = ["-m", "jobs.train_lightgbm", "distributed"]
        # The container uses the node's network: the group's port is reserved on the node and
        # NOMAD_PORT_lightgbm names it; there is nothing to map.
        network_mode = "host"
      }

      env {
        CARAVAN_STEP_EXECUTOR = "nomad"
      }

      # Secrets reach the step only through its environment, rendered from Vault (never through meta), as in
      # train-lightgbm.nomad.hcl: change_mode = "noop" so a rotation never restarts a rank mid-training.
      vault {
        role        = "caravan-${var.environment}-step"
        change_mode = "noop"
        env         = false
      }

      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/storage" -}}
          AWS_ACCESS_KEY_ID={{ .Data.data.aws_access_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .Data.data.aws_secret_access_key }}
          {{ with index .Data.data "webhdfs_token" }}CARAVAN_WEBHDFS_TOKEN={{ . }}{{ end }}
          {{ end -}}
        EOT
        destination          = "secrets/storage.env"
        env                  = true
        error_on_missing_key = true
        change_mode          = "noop"
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
