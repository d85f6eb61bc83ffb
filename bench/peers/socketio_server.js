// Socket.IO 4 peer for `tether bench`: the same job as tether, the way its docs suggest.
//
//   NODE_PATH=bench/results/peers/node/node_modules node bench/peers/socketio_server.js \
//       --port 0 --contacts contacts.json --ping-interval 4 [--groups groups.json] \
//       [--redis redis://127.0.0.1:PORT/0]
//
// A socket.io Server on Node's http module, WebSocket transport only, pinging every
// --ping-interval seconds. With --redis, @socket.io/redis-adapter (on the `redis` client) joins
// several such processes. Each socket names its user in the handshake's auth object
// ({user: "..."}; no token is checked) and joins a room named after the user. Presence follows
// the rooms pattern: on connection, on a "status" event and on disconnect, the server emits
// "presence" to the rooms of the user's contacts, read from the --contacts JSON file
// (user -> list of contacts). A "dm" event {to, body} is emitted to the recipient's room and
// acknowledged to the sender; nothing is stored. A group is a room "g:<group id>" that each
// member's socket joins on connection (members from the --groups JSON file, group -> list of
// members); a "gm" event {group, body} is emitted to that room without the sender's socket and
// acknowledged.
//
// Installed by `tether bench setup`; prints "peer ready ws=127.0.0.1:PORT" once it listens.
"use strict";

const fs = require("fs");
const http = require("http");
const { Server } = require("socket.io");

function option(name, fallback) {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : fallback;
}

async function main() {
  const contacts = JSON.parse(fs.readFileSync(option("--contacts"), "utf8"));
  const pingInterval = Number(option("--ping-interval", "4")) * 1000;
  const redisUrl = option("--redis", "");
  const groupsFile = option("--groups", "");
  const groupsOf = {};
  if (groupsFile) {
    const groups = JSON.parse(fs.readFileSync(groupsFile, "utf8"));
    for (const [group, members] of Object.entries(groups)) {
      for (const member of members) (groupsOf[member] ||= []).push(`g:${group}`);
    }
  }
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    pingInterval,
    pingTimeout: 20000,
    transports: ["websocket"],
    serveClient: false,
  });
  if (redisUrl) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const publisher = createClient({ url: redisUrl });
    const subscriber = publisher.duplicate();
    await Promise.all([publisher.connect(), subscriber.connect()]);
    io.adapter(createAdapter(publisher, subscriber));
  }

  io.on("connection", (socket) => {
    const user = String((socket.handshake.auth || {}).user || "");
    if (!user) {
      socket.disconnect(true);
      return;
    }
    const watchers = contacts[user] || [];
    socket.join([user, ...(groupsOf[user] || [])]);
    if (watchers.length) io.to(watchers).emit("presence", { user, status: "online" });
    socket.on("dm", (data, ack) => {
      io.to(data.to).emit("dm", { from: user, body: data.body });
      if (typeof ack === "function") ack(true);
    });
    socket.on("gm", (data, ack) => {
      socket.to(`g:${data.group}`).emit("gm", { group: data.group, from: user, body: data.body });
      if (typeof ack === "function") ack(true);
    });
    socket.on("status", (status) => {
      if (watchers.length) io.to(watchers).emit("presence", { user, status });
    });
    socket.on("disconnect", () => {
      if (watchers.length) io.to(watchers).emit("presence", { user, status: "offline" });
    });
  });

  httpServer.listen(Number(option("--port", "0")), "127.0.0.1", 4096, () => {
    console.log(`peer ready ws=127.0.0.1:${httpServer.address().port}`);
  });
  for (const name of ["SIGTERM", "SIGINT"]) {
    process.on(name, () => {
      io.close();
      process.exit(0);
    });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
