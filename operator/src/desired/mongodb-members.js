// Brings the managed MongoDB replica set's members to the spec, run by the
// init Job through the replica set (so on its primary) once it is initiated.
// One member at a time, each change a reconfiguration MongoDB accepts (one
// voting member added or removed), and a new member is waited for until it
// is healthy before the next change: the set never loses its majority.
// The operator shrinks the StatefulSet only after this Job has succeeded,
// so the members removed here are still running while they are removed.
//
// Environment: MEMBERS, the hosts the spec wants, comma-separated.
const want = process.env.MEMBERS.split(',');

function state(host) {
  const member = rs.status().members.find((m) => m.name === host);
  return member ? member.stateStr : 'ABSENT';
}

function waitFor(what, ready) {
  for (let i = 0; i < 600; i++) {
    if (ready()) return;
    sleep(1000);
  }
  throw new Error(`gave up waiting for ${what}`);
}

for (const host of want) {
  if (!rs.conf().members.some((m) => m.host === host)) {
    print(`adding ${host}`);
    rs.add({ host });
    waitFor(`${host} to catch up`, () => ['PRIMARY', 'SECONDARY'].includes(state(host)));
  }
}

for (const member of rs.conf().members) {
  if (want.includes(member.host)) continue;
  if (state(member.host) === 'PRIMARY') {
    // A primary cannot remove itself: hand over first.
    print(`stepping ${member.host} down`);
    try {
      rs.stepDown(60);
    } catch (e) {
      // The step-down closes this connection; the driver finds the new primary.
    }
    waitFor('another primary', () => {
      const primary = rs.status().members.find((m) => m.stateStr === 'PRIMARY');
      return primary !== undefined && primary.name !== member.host;
    });
  }
  print(`removing ${member.host}`);
  rs.remove(member.host);
}
// What the set says now, not what this run did: another change (or a run
// cut short) is caught here, and the Job fails and runs again rather than
// let the operator shrink the StatefulSet under members still counted.
const have = rs.conf().members.map((m) => m.host).sort();
print(`members: ${have.join(', ')}`);
if (JSON.stringify(have) !== JSON.stringify([...want].sort())) {
  throw new Error(`the set has ${have.join(', ')}, not ${want.join(', ')}`);
}
