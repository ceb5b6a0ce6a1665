# Monitoring the ranker on a schedule: every 15 minutes, `caravan monitor ranker` reads the event log of the last
# window, publishes the monitoring artifact and fires the triggers (caravan.monitoring.triggers): a newly closed
# day dispatches retrain-ranker-backfill for it; degradation or drift retrains (one per cool-down), optionally
# rolling back to a previous model that scores better on the same logged rows. Every trigger is recorded under
# caravan/<env>/models/ranker/triggers/ with its reason (caravan models history shows them).
# Not a step: it is not parameterized and is not read by caravan's job contract (jobspec.parse_spec). It carries
# the retrain role: it reads the store, writes under the model's Consul prefix and dispatches the retrain jobs.
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
  description = "Nomad namespace: caravan in production, caravan-staging in staging. The retrains are dispatched there too."
}

variable "environment" {
  type        = string
  default     = "dev"
  description = "The environment (production, staging...) in every shared name: the Vault role caravan-<env>-retrain, secret/data/caravan/<env>/, the pointers and trigger records caravan/<env>/models/. caravan publish sets the one in effect (CARAVAN_ENVIRONMENT, else derived from the namespace)."
}

variable "schedule" {
  type        = string
  default     = "*/15 * * * *"
  description = "Cron expression (UTC) of the monitor runs."
}

variable "schedule_enabled" {
  type        = bool
  default     = true
  description = "false registers the job without running it on schedule (nothing is then triggered but by hand)."
}

variable "window" {
  type        = string
  default     = "24h"
  description = "caravan monitor --window: how far back each run looks."
}

variable "degradation_tolerance" {
  type        = number
  default     = 0.02
  description = "caravan monitor --degradation-tolerance: retrain when production's online AUC < its gate AUC minus this."
}

variable "min_events" {
  type        = number
  default     = 1000
  description = "caravan monitor --min-events: labelled events production needs before its online AUC counts."
}

variable "drift_threshold" {
  type        = number
  default     = 0.2
  description = "caravan monitor --drift-threshold: a feature drifts when its PSI is above this."
}

variable "drift_features" {
  type        = number
  default     = 1
  description = "caravan monitor --drift-features: retrain when at least this many features drift."
}

variable "cooldown" {
  type        = string
  default     = "3h"
  description = "caravan monitor --cooldown: at most one degradation/drift retrain of the model within this."
}

variable "rollback_on_degradation" {
  type        = bool
  default     = false
  description = "caravan monitor --rollback-on-degradation: replay the previous model on the same logged rows and roll back to it if it scores better."
}

variable "artifact_root" {
  type        = string
  default     = ""
  description = "CARAVAN_ARTIFACT_ROOT of the run (the event log is under {root}/_events/), e.g. s3://bucket/caravan (empty: the image's luigi.cfg)."
}

variable "nomad_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:4646"
  description = "Nomad HTTP address as seen from the task (default: the agent on the task's node). With TLS: https://...:4646 and NOMAD_CACERT."
}

variable "consul_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:8500"
  description = "Consul HTTP address as seen from the task (default: the agent on the task's node). With TLS: https://$${attr.unique.network.ip-address}:8501; the CA comes from the consul-ca.pem template below."
}

variable "cpu" {
  type    = number
  default = 500
}

variable "memory" {
  type    = number
  default = 2048
}

job "monitor-ranker" {
  type        = "batch"
  namespace   = var.namespace
  datacenters = var.datacenters

  # prohibit_overlap: a slow run skips the next launches instead of two monitors reading the same window (their
  # trigger records are create-if-absent anyway, so racing monitors would still fire once).
  periodic {
    crons            = [var.schedule]
    prohibit_overlap = true
    time_zone        = "UTC"
    enabled          = var.schedule_enabled
  }

  group "monitor" {
    # A failed run fails visibly; the next run, 15 minutes later, is the retry (records make it idempotent).
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "monitor" {
      driver = "docker"

      # The Consul workload identity that renders the CA template below: since Nomad 1.10 a task gets one only
      # with this block (job_endpoint_hook_implicit_identities.go).
      consul {}

      config {
        image   = var.image
        command = "caravan"
        args = [
          "monitor", "ranker", "--window=${var.window}", "--dispatch=nomad",
          "--degradation-tolerance=${var.degradation_tolerance}", "--min-events=${var.min_events}",
          "--drift-threshold=${var.drift_threshold}", "--drift-features=${var.drift_features}",
          "--cooldown=${var.cooldown}", "--rollback-on-degradation=${var.rollback_on_degradation}",
        ]
      }

      env {
        CARAVAN_EXECUTOR      = "nomad"
        CARAVAN_POINTER       = "consul"
        CARAVAN_ARTIFACT_ROOT = var.artifact_root
        CARAVAN_ENVIRONMENT   = var.environment
        NOMAD_ADDR            = var.nomad_addr
        CONSUL_HTTP_ADDR      = var.consul_addr
        CONSUL_CACERT         = "${NOMAD_SECRETS_DIR}/consul-ca.pem"
      }

      kill_timeout = "20s"

      # Secrets only from the environment, rendered below; a re-derived Vault token must not restart a run.
      vault {
        role        = "caravan-${var.environment}-retrain"
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
      }

      # The triggers write records (and, on a rollback, the pointer) in Consul and dispatch retrains in Nomad.
      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/consul" }}CONSUL_HTTP_TOKEN={{ .Data.data.token }}{{ end }}
          {{ with secret "secret/data/caravan/${var.environment}/nomad" }}NOMAD_TOKEN={{ .Data.data.token }}{{ end }}
        EOT
        destination          = "secrets/cluster.env"
        env                  = true
        error_on_missing_key = true
      }

      # Consul's CA for CONSUL_CACERT when Consul serves TLS (empty without TLS: no CA file).
      template {
        data        = "{{ keyOrDefault \"caravan/${var.environment}/tls/consul-ca.pem\" \"\" }}"
        destination = "secrets/consul-ca.pem"
        change_mode = "noop"
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
