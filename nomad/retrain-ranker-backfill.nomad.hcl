# Retraining one chosen day: the same run as retrain-ranker.nomad.hcl (keep the two in step), dispatched on
# demand for a date other than yesterday, e.g. to rebuild a day whose events arrived late.
# Not a step: it is parameterized, but its only input is `date`; it is not read by caravan's job contract.
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

variable "environment" {
  type        = string
  default     = "dev"
  description = "The environment (production, staging...) in every shared name: the Vault role caravan-<env>-retrain, secret/data/caravan/<env>/, the scheduler's service caravan-<env>-luigid, the pointers caravan/<env>/models/. caravan publish sets the one in effect (CARAVAN_ENVIRONMENT, else derived from the namespace)."
}

variable "run_deadline" {
  type        = string
  default     = "8h"
  description = "The run's time limit (caravan.entrypoint --deadline): then it stops its steps and fails (exit 124), so a wedged run cannot hold prohibit_overlap forever. Above the longest step (NomadJobTask.timeout_s, 6 h)."
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
  description = "Nomad HTTP address as seen from the task (default: the agent on the task's node). With TLS: https://...:4646 and NOMAD_CACERT. The Task API socket (unix://$${NOMAD_SECRETS_DIR}/api.sock with a workload identity) needs a unix-socket transport caravan.nomad_api does not have yet; see the README."
}

variable "consul_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:8500"
  description = "Consul HTTP address as seen from the task (default: the agent on the task's node, which must listen on the node's address, not only 127.0.0.1). With TLS: https://$${attr.unique.network.ip-address}:8501; the CA comes from the consul-ca.pem template below."
}

variable "cpu" {
  type    = number
  default = 500
}

variable "memory" {
  type    = number
  default = 1024
}

job "retrain-ranker-backfill" {
  type        = "batch"
  namespace   = var.namespace
  datacenters = var.datacenters

  # `caravan trigger retrain --date D` dispatches it with -meta date=D (`nomad job dispatch -meta date=D
  # retrain-ranker-backfill` does the same). Not a step: `date` is its only required input.
  # `events` (optional) is RetrainRanker's --events: the monitor's triggers dispatch -meta events=logged so the
  # run learns from the served event log; without it the run reads what the image's luigi.cfg sets (as before).
  parameterized {
    payload       = "forbidden"
    meta_required = ["date"]
    meta_optional = ["events"]
  }

  group "retrain" {
    # A failed run fails visibly (luigi exits non-zero, see luigi.cfg [retcode]); dispatching again is the
    # retry, and it resumes from the artifacts already published.
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

      # The Consul workload identity that renders the service and CA templates below: since Nomad 1.10 a
      # task gets one only with this block (job_endpoint_hook_implicit_identities.go).
      consul {}

      # The date arrives as dispatch meta (NOMAD_META_date); luigi refuses a malformed one. The optional events
      # meta (NOMAD_META_events) becomes --events only when given.
      # Without a healthy central scheduler the run refuses to start rather than fall back to a local one,
      # which would let two runs build the same artifacts at once.
      config {
        image   = var.image
        command = "/bin/sh"
        args = [
          "-c",
          "test -n \"$LUIGI_SCHEDULER_URL\" || { echo \"caravan: no healthy caravan-$CARAVAN_ENVIRONMENT-luigid service in Consul\" >&2; exit 1; }; set --; test -z \"$NOMAD_META_events\" || set -- --events \"$NOMAD_META_events\"; exec python -m caravan.entrypoint --deadline \"$CARAVAN_RUN_DEADLINE\" --grace 20s luigi --module pipelines.ranker RetrainRanker --date \"$NOMAD_META_date\" --scheduler-url \"$LUIGI_SCHEDULER_URL\" --workers \"$CARAVAN_LUIGI_WORKERS\" \"$@\"",
        ]
      }

      env {
        CARAVAN_EXECUTOR      = "nomad"
        CARAVAN_POINTER       = "consul"
        CARAVAN_ARTIFACT_ROOT = var.artifact_root
        CARAVAN_LUIGI_WORKERS = var.luigi_workers
        CARAVAN_ENVIRONMENT   = var.environment
        CARAVAN_RUN_DEADLINE  = var.run_deadline
        NOMAD_ADDR            = var.nomad_addr
        CONSUL_HTTP_ADDR      = var.consul_addr
        CONSUL_CACERT         = "${NOMAD_SECRETS_DIR}/consul-ca.pem"
      }

      # SIGTERM first: caravan.entrypoint stops the step jobs this run dispatched (a DELETE each) and waits
      # up to --grace 20s for its task processes. 30 s is the client's default max_kill_timeout; a longer
      # value is silently capped to it unless the clients raise max_kill_timeout.
      kill_timeout = "30s"

      # The process reads secrets only from its environment, rendered by the templates below (which restart
      # the run when a secret changes); a renewed or re-derived Vault token alone must not restart a pipeline.
      # env = false: nothing in the run talks to Vault itself, so no VAULT_TOKEN in its environment.
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

      # The pipeline moves the model pointer (Consul) and dispatches the steps (Nomad).
      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/consul" }}CONSUL_HTTP_TOKEN={{ .Data.data.token }}{{ end }}
          {{ with secret "secret/data/caravan/${var.environment}/nomad" }}NOMAD_TOKEN={{ .Data.data.token }}{{ end }}
        EOT
        destination          = "secrets/cluster.env"
        env                  = true
        error_on_missing_key = true
      }

      # Healthy instances only. change_mode = "noop": the address is read once, at start; a health check
      # flapping during a long run must not restart the run. luigid listens on a static port (luigid.nomad.hcl),
      # so the address read here stays right across luigid's releases unless it moves to another node.
      template {
        data        = <<-EOT
          {{ with service "caravan-${var.environment}-luigid" }}{{ with index . 0 }}LUIGI_SCHEDULER_URL=http://{{ .Address }}:{{ .Port }}{{ end }}{{ end }}
        EOT
        destination = "local/scheduler.env"
        env         = true
        change_mode = "noop"
      }

      # Consul's CA for CONSUL_CACERT when Consul serves TLS: published by the operator at
      # caravan/<env>/tls/consul-ca.pem (public data; the template reads it through the Nomad client's own,
      # already verified, Consul connection). Empty without TLS, which caravan treats as no CA file.
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
