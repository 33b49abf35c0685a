// Runs once, on MongoDB's first start (an empty data volume): the chat
// servers' own user, with readWrite on the chat database only.
const name = process.env.MONGO_APP_DB || "chat";
db.getSiblingDB(name).createUser({
  user: process.env.MONGO_APP_USER || "chat",
  pwd: process.env.MONGO_APP_PASSWORD,
  roles: [{ role: "readWrite", db: name }],
});
