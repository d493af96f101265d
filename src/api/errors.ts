// An API error: the HTTP status and the one-line message the client shows.
export class ApiError extends Error {
  constructor(readonly status: 400 | 401 | 404 | 405 | 409 | 413 | 422 | 426 | 500 | 502, message: string) {
    super(message);
  }
}
