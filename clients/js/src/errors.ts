/**
 * Typed errors. Every failure carries a stable `code`: the server's own code
 * when a server refused (`report_conflict`, `batch_too_small`, …), or one of
 * this client's codes when it refused before sending anything
 * (`servers_disagree`, `plugin_digest_mismatch`, …). Errors that concern one
 * server say which (`server`, its index in `servers`, and `url`).
 */

/** Fields of an error, for the constructors. */
export interface ErrorFields {
  /** Stable machine code. */
  code: string;
  /** A sentence a person can act on. */
  message: string;
  /** Index of the server concerned, in `servers` order. */
  server?: number;
  /** Base URL of that server. */
  url?: string;
  /** HTTP status of the server's answer, if there was one. */
  status?: number;
  /** Other fields of the server's error object (e.g. `agreed`, `needed`). */
  details?: Record<string, unknown>;
}

/** Base class of every error this package throws. */
export class GuardianError extends Error {
  /** Stable machine code. */
  readonly code: string;
  /** Index of the server concerned, if one is. */
  readonly server: number | undefined;
  /** Base URL of that server. */
  readonly url: string | undefined;
  /** HTTP status of the server's answer, if there was one. */
  readonly status: number | undefined;
  /** Other fields of the server's error object. */
  readonly details: Record<string, unknown>;

  constructor(fields: ErrorFields) {
    super(fields.message);
    this.name = new.target.name;
    this.code = fields.code;
    this.server = fields.server;
    this.url = fields.url;
    this.status = fields.status;
    this.details = fields.details ?? {};
  }
}

/** The endpoint cannot be used safely: the servers disagree on it, one is not
 * where `servers` says, the plugin's bytes do not match its digest, or its
 * configuration hash differs. Nothing was posted. */
export class AgreementError extends GuardianError {}

/** A server's operator has not approved the endpoint's plugin: this client
 * refuses to shard for it (the plugin decides what each server sees). */
export class NotApprovedError extends GuardianError {}

/** No HTTP answer (connection refused, timeout, CORS refusal, …) after retries. */
export class UnreachableError extends GuardianError {}

/** 401: no token, or the server refused it. */
export class AuthenticationError extends GuardianError {}

/** 403: the token lacks the role (or the plugin is not approved there). */
export class PermissionError extends GuardianError {}

/** 404: unknown endpoint, batch or plugin. */
export class NotFoundError extends GuardianError {}

/** 409: a conflict (`report_conflict`, `batch_too_small`, `config_mismatch`, …). */
export class ConflictError extends GuardianError {}

/** 422 (the plugin refused a share on the server) or a measurement the plugin
 * refused locally (`invalid_measurement`). */
export class InvalidError extends GuardianError {}

/** 429: rate limit or user quota, after the retries the server allowed. */
export class RateLimitError extends GuardianError {}

/** Any other error answer (400, 413, 5xx after retries, …), or a 2xx answer
 * that is not what the API describes (`bad_answer`). */
export class ServerError extends GuardianError {}

/** The plugin failed locally in a way that is not the measurement's fault. */
export class PluginError extends GuardianError {}

/** The class for an error answer of HTTP status `status`. */
export function errorForStatus(status: number, fields: ErrorFields): GuardianError {
  switch (status) {
    case 401:
      return new AuthenticationError(fields);
    case 403:
      return fields.code === "plugin_not_approved" ? new NotApprovedError(fields) : new PermissionError(fields);
    case 404:
      return new NotFoundError(fields);
    case 409:
      return new ConflictError(fields);
    case 422:
      return new InvalidError(fields);
    case 429:
      return new RateLimitError(fields);
    default:
      return new ServerError(fields);
  }
}
