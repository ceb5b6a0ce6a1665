# Retraining on a schedule: every few hours, `luigi ... RetrainRanker --date <yesterday, UTC>` against the
# central scheduler (found in Consul as caravan-luigid): new data → validate → train → evaluate → gate →
# promote (Consul CAS) → the servers reload. The heavy steps run as their own parameterized jobs; this job
# only drives the pipeline. A day that is already built is not built again (append-only artifacts), so the
# runs after the first of a day finish at once unless the first failed.
# Not a step: it is not parameterized and is not read by caravan's job contract (jobspec.parse_spec).
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
  description = "Nomad namespace: caravan in production, caravan-staging in staging. The steps are dispatched there too."
}

variable "vault_role" {
  type        = string
  default     = "caravan-retrain"
  description = "Vault role (workload identity): reads the storage, consul and nomad secrets."
}

variable "schedule" {
  type        = string
  default     = "0 */3 * * *"
  description = "Cron expression (UTC) of the retraining runs."
}

variable "schedule_enabled" {
  type        = bool
  default     = true
  description = "false registers the job without launching it on schedule (caravan trigger retrain still can)."
}

variable "artifact_root" {
  type        = string
  default     = ""
  description = "CARAVAN_ARTIFACT_ROOT of the run, e.g. s3://bucket/caravan (empty: the image's luigi.cfg)."
}

variable "luigi_workers" {
  type        = number
  default     = 4
  description = "Luigi workers: how many steps (Nomad jobs) the run keeps in flight at once."
}

variable "nomad_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:4646"
  description = "Nomad HTTP address as seen from the task (default: the agent on the task's node)."
}

variable "consul_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:8500"
  description = "Consul HTTP address as seen from the task (default: the agent on the task's node)."
}

variable "cpu" {
  type    = number
  default = 500
}

variable "memory" {
  type    = number
  default = 1024
}

job "retrain-ranker" {
  type        = "batch"
  namespace   = var.namespace
  datacenters = var.datacenters

  periodic {
    crons            = [var.schedule]
    prohibit_overlap = true
    time_zone        = "UTC"
    enabled          = var.schedule_enabled
  }

  group "retrain" {
    # A failed run fails visibly (luigi exits non-zero, see luigi.cfg [retcode]); the next scheduled run,
    # or `caravan trigger retrain`, is the retry. Nomad restarting a half-done pipeline would hide that.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "retrain" {
      driver = "docker"

      # The date is computed when the run starts (the last complete UTC day), not when the job is published.
      # Without a healthy central scheduler the run refuses to start rather than fall back to a local one,
      # which would let two runs build the same artifacts at once.
      config {
        image   = var.image
        command = "/bin/sh"
        args = [
          "-c",
          "test -n \"$LUIGI_SCHEDULER_URL\" || { echo 'caravan: no healthy caravan-luigid service in Consul' >&2; exit 1; }; exec luigi --module pipelines.ranker RetrainRanker --date \"$(date -u -d yesterday +%F)\" --scheduler-url \"$LUIGI_SCHEDULER_URL\" --workers \"$CARAVAN_LUIGI_WORKERS\"",
        ]
      }

      env {
        CARAVAN_EXECUTOR      = "nomad"
        CARAVAN_POINTER       = "consul"
        CARAVAN_ARTIFACT_ROOT = var.artifact_root
        CARAVAN_LUIGI_WORKERS = var.luigi_workers
        NOMAD_ADDR            = var.nomad_addr
        CONSUL_HTTP_ADDR      = var.consul_addr
      }

      kill_timeout = "60s" # time for the Nomad executor to stop the steps it dispatched

      # The process reads secrets only from its environment, rendered by the templates below (which restart
      # the run when a secret changes); a renewed or re-derived Vault token alone must not restart a pipeline.
      vault {
        role        = var.vault_role
        change_mode = "noop"
      }

      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/storage" -}}
          AWS_ACCESS_KEY_ID={{ .Data.data.aws_access_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .Data.data.aws_secret_access_key }}
          {{ with index .Data.data "webhdfs_token" }}CARAVAN_WEBHDFS_TOKEN={{ . }}{{ end }}
          {{ end -}}
        EOT
        destination          = "secrets/storage.env"
        env                  = true
        error_on_missing_key = true
      }

      # The pipeline moves the model pointer (Consul) and dispatches the steps (Nomad).
      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/consul" }}CONSUL_HTTP_TOKEN={{ .Data.data.token }}{{ end }}
          {{ with secret "secret/data/caravan/nomad" }}NOMAD_TOKEN={{ .Data.data.token }}{{ end }}
        EOT
        destination          = "secrets/cluster.env"
        env                  = true
        error_on_missing_key = true
      }

      # Healthy instances only. change_mode = "noop": the address is read once, at start; a health check
      # flapping during a long run must not restart the run.
      template {
        data        = <<-EOT
          {{ with service "caravan-luigid" }}{{ with index . 0 }}LUIGI_SCHEDULER_URL=http://{{ .Address }}:{{ .Port }}{{ end }}{{ end }}
        EOT
        destination = "local/scheduler.env"
        env         = true
        change_mode = "noop"
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
