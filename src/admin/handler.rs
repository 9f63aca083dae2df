//! The console's pgwire handlers: a command (simple Query, or a prepared statement executed in
//! the extended protocol) is parsed, carried out against the [`App`] — SHOW tables, PAUSE,
//! RESUME, RECONNECT, KILL, KILL_CLIENT, RELOAD, SHUTDOWN — and answered with pgwire's
//! responses and encoders.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{stream, Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::PgWireBackendMessage;

use super::command::{parse, Command};
use super::error;
use super::show::show;
use super::table::{Cell, Kind, Table};
use crate::app::App;
use crate::pool::Pool;
use crate::protocol::sqlstate::SqlState;

/// The console's query handlers.
pub struct Console {
    app: Arc<App>,
    parser: Arc<ConsoleParser>,
}

impl Console {
    pub fn new(app: Arc<App>) -> Console {
        Console {
            parser: Arc::new(ConsoleParser {
                app: Arc::clone(&app),
            }),
            app,
        }
    }
}

/// Parses console commands for the extended protocol; knows each command's result columns.
pub struct ConsoleParser {
    app: Arc<App>,
}

fn syntax(e: super::command::CommandError) -> PgWireError {
    error(SqlState::SYNTAX_ERROR, e.to_string())
}

/// The columns of a table in the result formats asked for.
fn fields(table: &Table, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
    if let Some(Format::Individual(codes)) = format {
        if codes.len() > 1 && codes.len() != table.columns.len() {
            return Err(error(
                SqlState::PROTOCOL_VIOLATION,
                format!(
                    "bind message has {} result formats but query has {} columns",
                    codes.len(),
                    table.columns.len()
                ),
            ));
        }
    }
    Ok(table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (name, kind))| {
            let format = match format {
                Some(Format::Individual(codes)) if codes.len() == 1 => FieldFormat::from(codes[0]),
                Some(f) => f.format_for(i),
                None => FieldFormat::Text,
            };
            let datatype = match kind {
                Kind::Text => Type::TEXT,
                Kind::Int => Type::INT8,
            };
            FieldInfo::new((*name).to_owned(), None, None, datatype, format)
        })
        .collect())
}

/// The rows of a table as pgwire's response.
fn rows(table: Table, fields: Vec<FieldInfo>) -> PgWireResult<QueryResponse> {
    let schema = Arc::new(fields);
    let mut encoded = Vec::with_capacity(table.rows.len());
    let mut encoder = DataRowEncoder::new(Arc::clone(&schema));
    for row in table.rows {
        for cell in row {
            match cell {
                Cell::Text(s) => encoder.encode_field(&Some(s))?,
                Cell::Int(n) => encoder.encode_field(&Some(n))?,
                Cell::Null => encoder.encode_field(&None::<String>)?,
            }
        }
        encoded.push(Ok(encoder.take_row()));
    }
    let mut response = QueryResponse::new(schema, stream::iter(encoded));
    response.set_command_tag("SHOW");
    Ok(response)
}

#[async_trait]
impl QueryParser for ConsoleParser {
    type Statement = String;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<String>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        parse(sql).map_err(syntax)?;
        Ok(Some(sql.to_owned()))
    }

    fn get_parameter_types(&self, _stmt: &String) -> PgWireResult<Vec<Type>> {
        Ok(Vec::new())
    }

    fn get_result_schema(
        &self,
        stmt: &String,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match parse(stmt).map_err(syntax)? {
            Command::Show(what) => fields(&show(&self.app, what), format),
            _ => Ok(Vec::new()),
        }
    }
}

impl Console {
    /// Carries out one command; `format` is the extended protocol's result formats.
    async fn run<C>(&self, client: &mut C, text: &str, format: Option<&Format>) -> Response
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<C::Error>,
    {
        match self.execute(client, text, format).await {
            Ok(response) => response,
            Err(e) => Response::Error(Box::new(ErrorInfo::from(e))),
        }
    }

    async fn execute<C>(
        &self,
        client: &mut C,
        text: &str,
        format: Option<&Format>,
    ) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<C::Error>,
    {
        let app = &self.app;
        let tag = |t: &str| Ok(Response::Execution(Tag::new(t)));
        match parse(text).map_err(syntax)? {
            Command::Empty => Ok(Response::EmptyQuery),
            Command::Show(what) => {
                let table = show(app, what);
                let fields = fields(&table, format)?;
                Ok(Response::Query(rows(table, fields)?))
            }
            Command::Pause(db) => {
                let pools = self.pools(db.as_deref())?;
                futures_util::future::join_all(pools.iter().map(|p| p.pause())).await;
                tag("PAUSE")
            }
            Command::Resume(db) => {
                self.pools(db.as_deref())?.iter().for_each(|p| p.resume());
                tag("RESUME")
            }
            Command::Reconnect(db) => {
                self.pools(db.as_deref())?
                    .iter()
                    .for_each(|p| p.reconnect());
                tag("RECONNECT")
            }
            Command::Kill(db) => {
                let pools = self.pools(db.as_deref())?;
                let ended = app.clients().terminate_where(|_, facts| {
                    facts.database != super::CONSOLE_DATABASE
                        && db.as_deref().is_none_or(|d| facts.database == d)
                });
                pools.iter().for_each(|p| p.reconnect());
                tracing::info!(database = ?db, clients = ended, "admin KILL");
                tag("KILL")
            }
            Command::KillClient(id) => match app.clients().terminate_where(|pid, _| pid == id) {
                0 => Err(error(
                    SqlState::UNDEFINED_OBJECT,
                    format!("client {id} not found (SHOW CLIENTS lists them)"),
                )),
                _ => tag("KILL_CLIENT"),
            },
            Command::Reload => match app.reload() {
                Ok(notes) => {
                    for setting in notes.needs_restart {
                        let notice = ErrorInfo::new(
                            "NOTICE".to_owned(),
                            "01000".to_owned(),
                            format!("{setting} changed: it takes effect after a restart"),
                        );
                        client
                            .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                                notice,
                            )))
                            .await?;
                    }
                    tag("RELOAD")
                }
                Err(e) => Err(error(
                    SqlState::CONFIG_FILE_ERROR,
                    format!("RELOAD failed, the old configuration stays: {e}"),
                )),
            },
            Command::Shutdown { wait_for_clients } => {
                let app = Arc::clone(app);
                tracing::info!(wait_for_clients, "admin SHUTDOWN");
                tokio::spawn(async move {
                    if !wait_for_clients {
                        app.terminate.cancel();
                    }
                    app.drain().await;
                });
                tag("SHUTDOWN")
            }
        }
    }

    /// The pools of `database` (every pool without one).
    fn pools(&self, database: Option<&str>) -> PgWireResult<Vec<Arc<Pool>>> {
        let live = self.app.live();
        let pools: Vec<Arc<Pool>> = live
            .all()
            .filter(|d| database.is_none_or(|name| d.name == name))
            .flat_map(|d| d.pools().cloned())
            .collect();
        match (database, pools.is_empty()) {
            (Some(name), true) => Err(error(
                SqlState::INVALID_CATALOG_NAME,
                format!("database \"{name}\" does not exist"),
            )),
            _ => Ok(pools),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Console {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(vec![self.run(client, query, None).await])
    }
}

#[async_trait]
impl ExtendedQueryHandler for Console {
    type Statement = String;
    type QueryParser = ConsoleParser;

    fn query_parser(&self) -> Arc<ConsoleParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<String>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = String>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let text = portal.statement.statement.clone();
        let format = portal.result_column_format.clone();
        Ok(self.run(client, &text, Some(&format)).await)
    }
}
