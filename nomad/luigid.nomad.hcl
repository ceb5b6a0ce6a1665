# The central Luigi scheduler of the retraining runs: one luigid per environment, found through Consul as
# caravan-<env>-luigid (retrain-ranker.nomad.hcl renders its address). Two runs asking for the same task get one worker, and
# the visualiser shows every run. Its state survives restarts and updates on a host volume.
# Not a step: a service job, not read by caravan's job contract. It reads no secrets (no Vault block).
variable "image" {
  type        = string
  default     = "caravan:dev"
  description = "The project image (luigid comes with luigi); caravan publish sets <repository>:<release tag>."
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
  description = "The environment (production, staging...): the service is caravan-<env>-luigid. caravan publish sets the one in effect (CARAVAN_ENVIRONMENT, else derived from the namespace)."
}

variable "port" {
  type        = number
  default     = 8082
  description = "The scheduler's static port (luigi's default). Static, so the address a retrain run read at its start stays right across luigid's releases; two environments on one node need two ports."
}

variable "host_volume" {
  type        = string
  default     = "luigid-state"
  description = "Name of the client's host_volume that keeps the scheduler's state (declared in the Nomad client config)."
}

variable "cpu" {
  type    = number
  default = 500
}

variable "memory" {
  type    = number
  default = 512
}

job "luigid" {
  type        = "service"
  namespace   = var.namespace
  datacenters = var.datacenters

  # A singleton: never two schedulers at once (each would hand out the same tasks), so no canary; the old
  # allocation stops, then the new one starts on the state it saved. A release that never turns healthy
  # goes back to the last stable version.
  update {
    max_parallel      = 1
    canary            = 0
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "scheduler" {
    count = 1

    volume "luigid-state" {
      type      = "host"
      source    = var.host_volume
      read_only = false
    }

    network {
      port "http" {
        static = var.port
      }
    }

    service {
      name     = "caravan-${var.environment}-luigid"
      port     = "http"
      provider = "consul"
      tags     = ["caravan", "luigi"]

      # A cheap RPC that goes through the scheduler itself (not a static file): the running tasks only,
      # /api/task_list?data={"status":"RUNNING"}. Without a filter task_list serialises every task.
      check {
        type     = "http"
        path     = "/api/task_list?data=%7B%22status%22%3A%22RUNNING%22%7D"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "luigid" {
      driver = "docker"

      # No --logdir: luigid then logs to stderr, which `nomad alloc logs` shows and Nomad rotates.
      config {
        image   = var.image
        command = "luigid"
        args    = ["--port", "${NOMAD_PORT_http}", "--state-path", "/var/lib/luigid/state.pickle"]
        ports   = ["http"]
      }

      volume_mount {
        volume      = "luigid-state"
        destination = "/var/lib/luigid"
      }

      # luigid pickles its state to --state-path when it gets SIGTERM; give it time to finish.
      kill_timeout = "30s"

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
