// Runs once, on MongoDB's first start (an empty data volume): the chat
// servers' own user, with readWrite on the chat database only.
const fs = require("fs");
const name = process.env.MONGO_APP_DB || "chat";
db.getSiblingDB(name).createUser({
  user: process.env.MONGO_APP_USER || "chat",
  // Generated into the secrets volume by deploy/compose/secrets.sh.
  pwd: fs.readFileSync(process.env.MONGO_APP_PASSWORD_FILE, "utf8").trim(),
  roles: [{ role: "readWrite", db: name }],
});
