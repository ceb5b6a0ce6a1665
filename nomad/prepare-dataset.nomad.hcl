# Step prepare-dataset: Read events for a date window; split train, valid and test; record schema and column statistics.
# Inputs arrive only as dispatch meta (the caravan job contract, see caravan.step); payload is forbidden.
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
  type    = number
  default = 1000
}

variable "memory" {
  type    = number
  default = 4096
}

job "prepare-dataset" {
  type        = "batch"
  namespace   = var.namespace
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
        args    = ["-m", "jobs.prepare_dataset"]
      }

      env {
        CARAVAN_STEP_EXECUTOR = "nomad"
      }

      # Secrets reach the step only through its environment, rendered from Vault (never through meta):
      # caravan's env SecretSource reads them. A missing field fails the task instead of rendering "<no value>";
      # the WebHDFS token is optional (S3-only sites leave it out).
      # change_mode = "noop" (token and template): a re-derived token or a re-rendered secret must not restart
      # hours of training from scratch; the step reads its credentials once, at start. A rotation therefore
      # keeps the old storage key valid for the longest step (NomadJobTask.timeout_s, 6 h by default).
      # env = false: the step reads no Vault itself, so it gets no VAULT_TOKEN in its environment.
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
