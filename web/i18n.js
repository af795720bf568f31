// Every string the page shows lives in this one dictionary, German first.
// Error codes are the ones of docs/protocol.md; each has a message in both languages.

const STORAGE_KEY = "roundtable.lang";
const LANGS = ["de", "en"];

export const STRINGS = {
  de: {
    "app.subtitle": "Videoberatung",
    "app.skip": "Zum Inhalt springen",
    "app.messages": "Meldungen",
    "lang.switch": "English",
    "lang.switchLabel": "Switch to English",

    "prejoin.title": "Bereit für Ihr Gespräch?",
    "prejoin.as": "Sie nehmen teil als",
    "prejoin.privacy": "Das Gespräch wird nicht aufgezeichnet. Bild und Ton laufen nur über die Server der Agentur.",
    "prejoin.check": "Prüfen Sie Kamera und Mikrofon in der Vorschau.",
    "prejoin.join": "Gespräch beitreten",
    "prejoin.joining": "Verbindung wird aufgebaut …",
    "prejoin.previewLabel": "Vorschau Ihrer Kamera",
    "prejoin.noLink":
      "Dieser Seite fehlt ein persönlicher Zugangslink. Bitte öffnen Sie den Link, den Sie erhalten haben.",
    "prejoin.badLink":
      "Der Zugangslink scheint unvollständig zu sein. Sie können es trotzdem versuchen.",
    "prejoin.expiredLink": "Dieser Zugangslink ist vermutlich abgelaufen.",
    "prejoin.sameRoom":
      "Ich sitze im selben Raum wie meine Beratungsperson (Mikrofon und Lautsprecher starten aus, damit es nicht hallt).",
    "prejoin.consent":
      "Ich habe verstanden: Das Gespräch wird nicht aufgezeichnet. Ich nehme freiwillig mit Bild und Ton teil und kann jederzeit gehen.",

    "waiting.title": "Sie sind im Warteraum",
    "waiting.text": "Ihre Beratungsperson lässt Sie herein, sobald sie so weit ist. Bitte lassen Sie diese Seite geöffnet. Bis dahin wird weder Bild noch Ton übertragen.",
    "waiting.text.partner": "Die Beratungsperson lässt Sie herein, sobald sie so weit ist. Bitte lassen Sie diese Seite geöffnet. Bis dahin wird weder Bild noch Ton übertragen.",

    "device.starting": "Kamera und Mikrofon werden gestartet …",
    "device.camera": "Kamera",
    "device.microphone": "Mikrofon",
    "device.ready": "Kamera und Mikrofon sind bereit.",
    "device.audioOnly": "Nur das Mikrofon ist verfügbar – Sie nehmen ohne Bild teil.",
    "device.videoOnly": "Nur die Kamera ist verfügbar – Sie nehmen ohne Ton teil.",
    "device.denied":
      "Kamera und Mikrofon wurden nicht freigegeben. Sie können sie im Browser erlauben (Schloss-Symbol neben der Adresse) oder ohne sie beitreten und zuhören.",
    "device.notFound":
      "Keine Kamera und kein Mikrofon gefunden. Sie können trotzdem beitreten und zuhören.",
    "device.insecure":
      "Kamera und Mikrofon sind nur über eine sichere Verbindung (HTTPS) nutzbar.",
    "device.failed": "Kamera und Mikrofon konnten nicht gestartet werden.",
    "device.listenOnly": "Sie nehmen ohne Kamera und Mikrofon teil (nur sehen und hören).",
    "device.speaker": "Lautsprecher",
    "device.testSound": "Ton testen",
    "device.testPlaying":
      "Sie sollten jetzt einen kurzen Ton hören. Hören Sie nichts, wählen Sie einen anderen Lautsprecher oder stellen Sie den Ton lauter.",
    "device.testFailed": "Der Testton konnte nicht abgespielt werden.",
    "device.speakerFixed":
      "In diesem Browser können Sie den Lautsprecher hier nicht wählen. Der Ton kommt aus dem Lautsprecher, der auf Ihrem Gerät eingestellt ist.",
    "device.speakerChosen": "Der Ton kommt jetzt aus: {name}.",

    "hand.raise": "Hand heben",
    "hand.raised": "Hand gehoben",
    "hand.order": "{n}. Hand",
    "hand.youRaised": "Sie haben die Hand gehoben. Die Beratungsperson sieht es.",
    "hand.youLowered": "Sie haben die Hand gesenkt.",
    "hand.someoneRaised": "{name} hebt die Hand.",
    "call.title": "Gespräch",
    "call.tilesLabel": "Bilder der Teilnehmenden",
    "call.participants": "Teilnehmende",
    "call.you": "Sie",
    "call.micOn": "Mikrofon ausschalten",
    "call.micOff": "Mikrofon einschalten",
    "call.camOn": "Kamera ausschalten",
    "call.camOff": "Kamera einschalten",
    "call.leave": "Gespräch verlassen",
    "call.leaveShort": "Verlassen",
    "call.sound": "Ton aktivieren",
    "call.screenOn": "Bildschirm teilen",
    "call.screenOff": "Bildschirm nicht mehr teilen",
    "status.screenOn": "Sie teilen Ihren Bildschirm. Die anderen sehen ihn statt Ihres Kamerabilds.",
    "status.screenOff": "Sie teilen Ihren Bildschirm nicht mehr.",
    "status.screenFailed": "Der Bildschirm konnte nicht geteilt werden.",
    "call.micMuted": "Mikrofon aus",
    "call.reconnecting": "Verbindung wird wiederhergestellt …",
    "call.qualityPoor": "Schwache Verbindung",
    "call.videoPaused": "Video pausiert – schwache Verbindung",
    "call.retry": "Erneut versuchen",
    "call.rejoin": "Wieder teilnehmen",
    "call.reconnectingSelf":
      "Ihre Verbindung ist unterbrochen. Wir verbinden Sie wieder – Ihr Platz im Gespräch bleibt {seconds} Sekunden frei.",
    "call.reconnectFailed":
      "Die Verbindung konnte nicht wiederhergestellt werden. Öffnen Sie Ihren Link erneut, um wieder teilzunehmen.",
    "status.gone": "{name} hat die Verbindung verloren und ist nicht mehr im Gespräch.",
    "status.lockedOut": "{name} wollte beitreten, aber das Gespräch ist gesperrt.",
    "status.seatConflict": "Der Link von {name} wurde auf einem zweiten Gerät geöffnet und abgewiesen.",
    "call.camMuted": "Kamera aus",
    "call.waitingOthers": "Warten auf weitere Teilnehmende …",

    "status.connecting": "Verbindung wird aufgebaut …",
    "status.connected": "Sie sind im Gespräch.",
    "status.waiting": "Sie sind im Warteraum. Bitte warten Sie, bis Sie hereingelassen werden.",
    "status.media": "Bild und Ton werden verbunden …",
    "status.joined": "{name} ist dem Gespräch beigetreten.",
    "status.left": "{name} hat das Gespräch verlassen.",
    "status.reconnecting": "Verbindung unterbrochen – neuer Versuch …",
    "status.moving": "Das Gespräch wechselt auf einen anderen Server – einen Moment bitte …",
    "status.unreachable": "Der Server ist nicht erreichbar – neuer Versuch …",
    "status.mediaFailed":
      "Die Bild- und Tonverbindung ist unterbrochen. Bitte prüfen Sie Ihr Netzwerk.",
    "status.micOff": "Ihr Mikrofon ist aus.",
    "status.micOn": "Ihr Mikrofon ist an.",
    "status.camOff": "Ihre Kamera ist aus.",
    "status.camOn": "Ihre Kamera ist an.",

    "ended.leftTitle": "Sie haben das Gespräch verlassen.",
    "ended.errorTitle": "Die Teilnahme ist leider nicht möglich.",
    "ended.closedTitle": "Die Verbindung wurde beendet.",
    "ended.closedText": "Die Verbindung zum Gespräch ist abgebrochen. Sie können erneut beitreten.",
    "ended.rejoin": "Erneut beitreten",
    "ended.checking": "Ihr Zugangslink wird geprüft …",
    "ended.detail": "Hinweis des Servers",

    "panel.title": "Teilnehmende",
    "panel.inCall": "Im Gespräch",
    "panel.lock": "Gespräch sperren (niemand Neues wird eingelassen)",
    "lobby.title": "Warteraum",
    "lobby.titleWaiting": "wartet",
    "lobby.notifyTitle": "Jemand wartet im Warteraum",
    "lobby.notifyBody": "{name} möchte in das Gespräch.",
    "lobby.notifyAsk": "Mich benachrichtigen, wenn jemand wartet",
    "lobby.notifyOn": "Benachrichtigungen sind an",
    "lobby.notifyDenied": "Benachrichtigungen sind im Browser blockiert",
    "lobby.admit": "Einlassen",
    "lobby.deny": "Ablehnen",
    "lobby.admitLabel": "{name} einlassen",
    "lobby.denyLabel": "{name} ablehnen",
    "mod.mute": "Stummschalten",
    "mod.muteLabel": "Mikrofon von {name} stummschalten",
    "mod.remove": "Entfernen",
    "mod.removeLabel": "{name} aus dem Gespräch entfernen",
    "mod.mutedNote": "stummgeschaltet",

    "invite.open": "Partner hinzuschalten",
    "invite.title": "Partner hinzuschalten",
    "invite.type": "Art der Organisation",
    "invite.organisation": "Organisation",
    "invite.name": "Name der Person",
    "invite.rights": "Rechte",
    "invite.minutes": "Gültig (Minuten)",
    "invite.waiting": "Erst in den Warteraum (Sie lassen die Person herein)",
    "invite.email": "E-Mail-Adresse (freiwillig)",
    "invite.emailHint": "Wir schicken den Link dorthin, mit einem Kalendereintrag.",
    "invite.email.sent": "Die Einladung wurde per E-Mail an {email} geschickt.",
    "invite.email.failed": "Die E-Mail konnte nicht verschickt werden. Bitte geben Sie den Link selbst weiter.",
    "invite.email.disabled": "Der E-Mail-Versand ist auf diesem Server nicht eingerichtet. Bitte geben Sie den Link selbst weiter.",
    "qr.open": "QR-Code für die Kundin/den Kunden",
    "qr.title": "Link für das eigene Handy der Kundin oder des Kunden",
    "qr.text": "Die Kundin oder der Kunde scannt den Code mit der Kamera des eigenen Handys und tritt damit dem Gespräch bei.",
    "qr.alt": "QR-Code mit dem Zugangslink der Kundin/des Kunden",
    "invite.submit": "Einladung erstellen",
    "invite.ready": "Einladung erstellt",
    "invite.pass": "Geben Sie diesen Link an die eingeladene Person weiter. Er gilt nur einmal.",
    "invite.copy": "Kopieren",
    "invite.linkLabel": "Einladungslink",
    "invite.copiedShort": "Kopiert ✓",
    "invite.expires": "Gültig bis {time} Uhr.",
    "invite.required": "Bitte geben Sie Organisation und Namen an.",
    "partners.hint": "Tippen Sie die ersten Buchstaben: Partner aus dem Verzeichnis werden vorgeschlagen.",
    "partners.list": "Vorschläge aus dem Partnerverzeichnis",
    "partners.count.one": "1 Vorschlag. Wählen Sie mit den Pfeiltasten und übernehmen Sie mit der Eingabetaste.",
    "partners.count.many": "{count} Vorschläge. Wählen Sie mit den Pfeiltasten und übernehmen Sie mit der Eingabetaste.",
    "partners.filled": "Die Angaben für {name} sind eingetragen. Bitte prüfen Sie sie und erstellen Sie dann die Einladung.",
    "invite.delivery.queued": "Die Einladung wird zusätzlich automatisch zugestellt …",
    "invite.delivery.delivered": "Die Einladung wurde automatisch zugestellt.",
    "invite.delivery.failed": "Die automatische Zustellung ist fehlgeschlagen. Bitte geben Sie den Link selbst weiter.",
    "org.pension_insurance": "Rentenversicherung",
    "org.chamber": "Kammer",
    "org.training_provider": "Bildungsträger",
    "org.job_centre": "Jobcenter",
    "org.interpreter": "Dolmetschdienst",
    "org.other": "Sonstige",
    "right.audio": "Ton",
    "right.video": "Bild",
    "right.screen": "Bildschirm teilen",
    "right.see_client": "Bild der Kundin oder des Kunden sehen",
    "right.chat": "Chat",
    "chat.title": "Chat",
    "chat.note": "Der Chat wird nach dem Gespräch nicht gespeichert.",
    "chat.off": "Der Chat ist ausgeschaltet.",
    "chat.label": "Ihre Nachricht",
    "chat.placeholder": "Nachricht schreiben …",
    "chat.send": "Senden",
    "chat.allow": "Chat erlauben",
    "chat.turnedOn": "Der Chat ist wieder eingeschaltet.",
    "chat.turnedOff": "Der Chat wurde ausgeschaltet.",
    "chat.from": "Nachricht von {name}: {text}",
    "chat.buttonUnread": "Chat, {count} neue Nachrichten",
    "dialog.cancel": "Abbrechen",
    "dialog.close": "Schließen",

    "end.button": "Für alle beenden",
    "end.title": "Gespräch für alle beenden?",
    "end.text": "Alle werden getrennt. Danach funktioniert keiner der Links mehr.",
    "end.confirm": "Für alle beenden",

    "status.hostAway": "Ihre Beratungsperson ist kurz nicht verbunden. Bitte bleiben Sie im Gespräch.",
    "status.hostAway.partner": "Die Beratungsperson ist kurz nicht verbunden. Bitte bleiben Sie im Gespräch.",
    "status.hostBack": "Ihre Beratungsperson ist wieder da.",
    "status.hostBack.partner": "Die Beratungsperson ist wieder da.",
    "status.sessionEnding": "Das Gespräch endet in {minutes} Minuten.",
    "status.sessionEndingOne": "Das Gespräch endet in einer Minute.",
    "status.sessionExtended": "Das Gespräch wurde bis {time} Uhr verlängert.",
    "status.mutedByHost":
      "Ihre Beratungsperson hat Ihr Mikrofon stummgeschaltet. Schalten Sie es wieder ein, wenn Sie sprechen möchten.",
    "status.mutedByHost.partner":
      "Die Beratungsperson hat Ihr Mikrofon stummgeschaltet. Schalten Sie es wieder ein, wenn Sie sprechen möchten.",
    "status.videoMutedByHost":
      "Ihre Beratungsperson hat Ihre Kamera ausgeschaltet. Schalten Sie sie wieder ein, wenn Sie möchten.",
    "status.videoMutedByHost.partner":
      "Die Beratungsperson hat Ihre Kamera ausgeschaltet. Schalten Sie sie wieder ein, wenn Sie möchten.",
    "status.someoneWaiting": "{name} wartet im Warteraum.",
    "status.locked": "Das Gespräch ist gesperrt.",
    "status.unlocked": "Das Gespräch ist nicht mehr gesperrt.",
    "status.admitted": "Sie wurden eingelassen.",

    "ended.endedTitle": "Das Gespräch wurde beendet.",
    "ended.removedTitle": "Sie wurden aus dem Gespräch entfernt.",
    "ended.deniedTitle": "Sie wurden nicht hereingelassen.",
    "ended.replacedTitle": "Das Gespräch läuft in einem anderen Fenster weiter.",

    "role.caseworker": "Beratungsperson",
    "role.client": "Kundin/Kunde",
    "role.caseworkerOnSite": "Beratung mit Kundin/Kunde vor Ort",
    "role.partner": "Fachperson",
    "role.unknown": "Teilnehmende Person",

    "error.token_missing": "Es fehlt ein Zugangslink. Bitte öffnen Sie Ihren persönlichen Link.",
    "error.token_malformed": "Der Zugangslink ist ungültig oder unvollständig. Bitte öffnen Sie den Link noch einmal genau so, wie Sie ihn bekommen haben.",
    "error.token_bad_signature": "Der Zugangslink ist ungültig. Bitte öffnen Sie den Link noch einmal genau so, wie Sie ihn bekommen haben.",
    "error.token_bad_algorithm": "Der Zugangslink ist ungültig. Bitte öffnen Sie den Link noch einmal genau so, wie Sie ihn bekommen haben.",
    "error.token_expired": "Der Zugangslink ist abgelaufen. Bitte fragen Sie Ihre Beratungsperson nach einem neuen Link.",
    "error.token_expired.partner":
      "Der Einladungslink ist abgelaufen. Die Person, die Sie eingeladen hat, kann Ihnen einen neuen schicken.",
    "error.token_expired.caseworker": "Der Zugangslink ist abgelaufen. Bitte legen Sie das Gespräch neu an.",
    "error.token_not_yet_valid":
      "Der Zugangslink ist noch nicht gültig. Bitte versuchen Sie es zum vereinbarten Termin erneut.",
    "error.token_claims_missing": "Der Zugangslink ist unvollständig. Bitte öffnen Sie den Link noch einmal genau so, wie Sie ihn bekommen haben.",
    "error.token_wrong_audience": "Der Zugangslink gehört nicht zu diesem Dienst.",
    "error.token_wrong_issuer": "Der Zugangslink wurde nicht von diesem Dienst ausgestellt.",
    "error.token_wrong_room": "Der Zugangslink gilt nicht für dieses Gespräch.",
    "error.token_revoked": "Der Zugangslink wurde zurückgezogen und gilt nicht mehr.",
    "error.invite_used":
      "Diese Einladung wurde schon benutzt, sie gilt nur einmal. Die Person, die Sie eingeladen hat, kann Ihnen eine neue schicken.",
    "error.api_key_missing": "Der Zugang zur Schnittstelle fehlt (API-Schlüssel).",
    "error.api_key_invalid": "Der API-Schlüssel ist ungültig.",
    "error.forbidden": "Das ist mit Ihrem Zugang nicht möglich.",
    "error.not_found": "Das Gespräch wurde nicht gefunden. Bitte prüfen Sie den Link.",
    "error.bad_request": "Die Angaben waren unvollständig oder nicht richtig.",
    "error.payload_too_large": "Das ist zu viel auf einmal. Bitte kürzen Sie den Text.",
    "error.too_many_requests": "Zu viele Anfragen. Bitte warten Sie einen Moment.",
    "error.room_closed": "Dieses Gespräch ist beendet. Der Link gilt nicht mehr.",
    "error.room_full": "Das Gespräch ist voll. Es können keine weiteren Personen teilnehmen.",
    "error.unknown_event": "Die Seite hat eine unbekannte Nachricht gesendet. Bitte laden Sie die Seite neu.",
    "error.invalid_payload": "Die Seite hat fehlerhafte Daten gesendet. Bitte laden Sie die Seite neu.",
    "error.sdp_invalid": "Bild und Ton konnten nicht verbunden werden. Bitte laden Sie die Seite neu.",
    "error.internal": "Auf dem Server ist ein Fehler aufgetreten. Bitte versuchen Sie es noch einmal.",
    "error.lobby_denied": "Sie wurden nicht in das Gespräch hereingelassen. Bei Fragen wenden Sie sich bitte an die Agentur.",
    "error.lobby_denied.partner":
      "Sie wurden nicht in das Gespräch hereingelassen. Bei Fragen wenden Sie sich bitte an die Person, die Sie eingeladen hat.",
    "error.replaced": "Sie haben das Gespräch in einem anderen Fenster oder Tab geöffnet. Dort geht es weiter.",
    "error.wrong_node": "Das Gespräch läuft auf einem anderen Server – Sie werden verbunden …",
    "error.unavailable": "Der Dienst ist kurz nicht erreichbar. Bitte versuchen Sie es gleich noch einmal.",
    "error.node_draining": "Das Gespräch wechselt wegen Wartungsarbeiten auf einen anderen Server.",
    "error.server_shutdown": "Der Server wird neu gestartet – die Verbindung wird wiederhergestellt …",
    "error.chat_disabled": "Der Chat ist in diesem Gespräch ausgeschaltet.",
    "error.partner_not_found": "Diese Partnerorganisation ist nicht (mehr) im Verzeichnis.",
    "error.partner_exists": "Eine Partnerorganisation mit diesem Namen ist schon im Verzeichnis.",
    "error.consent_required":
      "Bitte bestätigen Sie zuerst den Hinweis zum Gespräch (das Kästchen über „Gespräch beitreten“).",
    "error.removed": "Ihre Beratungsperson hat Sie aus dem Gespräch entfernt.",
    "error.removed.partner": "Die Beratungsperson hat Sie aus dem Gespräch entfernt.",
    "error.room_ended": "Ihre Beratungsperson hat das Gespräch für alle beendet.",
    "error.room_ended.partner": "Die Beratungsperson hat das Gespräch für alle beendet.",
    "error.room_ended.caseworker": "Sie haben das Gespräch für alle beendet. Die Links gelten nicht mehr.",
    "error.session_expired": "Die vereinbarte Zeit für dieses Gespräch ist abgelaufen.",
    "error.room_locked":
      "Das Gespräch ist gerade gesperrt. Es werden keine weiteren Personen eingelassen.",
    "error.seat_taken":
      "Dieser Link ist gerade auf einem anderen Gerät im Gespräch. Bitte nutzen Sie das andere Gerät oder wenden Sie sich an Ihre Beratungsperson.",
    "error.seat_taken.partner":
      "Dieser Link ist gerade auf einem anderen Gerät im Gespräch. Bitte nutzen Sie das andere Gerät oder wenden Sie sich an die Beratungsperson.",
    "error.seat_taken.caseworker":
      "Dieser Link ist gerade auf einem anderen Gerät im Gespräch. Bitte nutzen Sie das andere Gerät.",
    "error.invite_revoked": "Diese Einladung wurde zurückgezogen.",
    "error.timeout": "Der Server antwortet nicht. Bitte prüfen Sie Ihre Verbindung.",
    "error.media": "Die Bild- und Tonverbindung konnte nicht aufgebaut werden.",
    "error.unknown": "Ein unbekannter Fehler ist aufgetreten.",
  },
  en: {
    "app.subtitle": "Video counselling",
    "app.skip": "Skip to content",
    "app.messages": "Messages",
    "lang.switch": "Deutsch",
    "lang.switchLabel": "Auf Deutsch umschalten",

    "prejoin.title": "Ready for your appointment?",
    "prejoin.as": "You are taking part as",
    "prejoin.privacy": "The conversation is not recorded. Picture and sound only pass through the agency's own servers.",
    "prejoin.check": "Check your camera and microphone in the preview.",
    "prejoin.join": "Join the conversation",
    "prejoin.joining": "Connecting …",
    "prejoin.previewLabel": "Preview of your camera",
    "prejoin.noLink":
      "This page is missing your personal access link. Please open the link you received.",
    "prejoin.badLink": "The access link looks incomplete. You can still try to join.",
    "prejoin.expiredLink": "This access link has probably expired.",
    "prejoin.sameRoom":
      "I am in the same room as my adviser (microphone and speaker start off, so there is no echo).",
    "prejoin.consent":
      "I understand: the conversation is not recorded. I take part with picture and sound of my own free will and may leave at any time.",

    "waiting.title": "You are in the waiting room",
    "waiting.text": "Your adviser will let you in as soon as they are ready. Please keep this page open. No picture or sound is sent until then.",
    "waiting.text.partner": "The adviser will let you in as soon as they are ready. Please keep this page open. No picture or sound is sent until then.",

    "device.starting": "Starting camera and microphone …",
    "device.camera": "Camera",
    "device.microphone": "Microphone",
    "device.ready": "Camera and microphone are ready.",
    "device.audioOnly": "Only the microphone is available – you will join without video.",
    "device.videoOnly": "Only the camera is available – you will join without sound.",
    "device.denied":
      "Camera and microphone were not allowed. You can allow them in the browser (the lock icon next to the address) or join without them and listen.",
    "device.notFound": "No camera or microphone found. You can still join and listen.",
    "device.insecure": "Camera and microphone need a secure connection (HTTPS).",
    "device.failed": "Camera and microphone could not be started.",
    "device.listenOnly": "You take part without camera and microphone (watch and listen only).",
    "device.speaker": "Speaker",
    "device.testSound": "Play test sound",
    "device.testPlaying":
      "You should hear a short sound now. If you hear nothing, choose another speaker or turn the volume up.",
    "device.testFailed": "The test sound could not be played.",
    "device.speakerFixed":
      "This browser does not let you choose the speaker here. Sound plays through the speaker set on your device.",
    "device.speakerChosen": "Sound now plays through: {name}.",

    "hand.raise": "Raise your hand",
    "hand.raised": "Hand raised",
    "hand.order": "Hand {n}",
    "hand.youRaised": "You raised your hand. The adviser can see it.",
    "hand.youLowered": "You lowered your hand.",
    "hand.someoneRaised": "{name} raises their hand.",
    "call.title": "Conversation",
    "call.tilesLabel": "Pictures of the participants",
    "call.participants": "Participants",
    "call.you": "You",
    "call.micOn": "Turn microphone off",
    "call.micOff": "Turn microphone on",
    "call.camOn": "Turn camera off",
    "call.camOff": "Turn camera on",
    "call.leave": "Leave the conversation",
    "call.leaveShort": "Leave",
    "call.sound": "Turn on sound",
    "call.screenOn": "Share your screen",
    "call.screenOff": "Stop sharing your screen",
    "status.screenOn": "You are sharing your screen. The others see it instead of your camera.",
    "status.screenOff": "You stopped sharing your screen.",
    "status.screenFailed": "The screen could not be shared.",
    "call.micMuted": "Microphone off",
    "call.reconnecting": "Reconnecting …",
    "call.qualityPoor": "Weak connection",
    "call.videoPaused": "Video paused – weak connection",
    "call.retry": "Try again",
    "call.rejoin": "Rejoin",
    "call.reconnectingSelf":
      "Your connection was interrupted. We are reconnecting you – your place in the conversation is kept for {seconds} seconds.",
    "call.reconnectFailed":
      "The connection could not be restored. Open your link again to rejoin.",
    "status.gone": "{name} lost their connection and is no longer in the conversation.",
    "status.lockedOut": "{name} tried to join, but the conversation is locked.",
    "status.seatConflict": "{name}'s link was opened on a second device and refused.",
    "call.camMuted": "Camera off",
    "call.waitingOthers": "Waiting for others to join …",

    "status.connecting": "Connecting …",
    "status.connected": "You are in the conversation.",
    "status.waiting": "You are in the waiting room. Please wait until you are let in.",
    "status.media": "Connecting picture and sound …",
    "status.joined": "{name} joined the conversation.",
    "status.left": "{name} left the conversation.",
    "status.reconnecting": "Connection lost – trying again …",
    "status.moving": "The conversation is moving to another server – one moment please …",
    "status.unreachable": "The server cannot be reached – trying again …",
    "status.mediaFailed": "Picture and sound are interrupted. Please check your network.",
    "status.micOff": "Your microphone is off.",
    "status.micOn": "Your microphone is on.",
    "status.camOff": "Your camera is off.",
    "status.camOn": "Your camera is on.",

    "ended.leftTitle": "You left the conversation.",
    "ended.errorTitle": "Sorry, you cannot take part.",
    "ended.closedTitle": "The connection was closed.",
    "ended.closedText": "The connection to the conversation broke off. You can join again.",
    "ended.rejoin": "Join again",
    "ended.checking": "Checking your access link …",
    "ended.detail": "Server says",

    "panel.title": "Participants",
    "panel.inCall": "In the conversation",
    "panel.lock": "Lock the conversation (no one new is let in)",
    "lobby.title": "Waiting room",
    "lobby.titleWaiting": "waiting",
    "lobby.notifyTitle": "Someone is in the waiting room",
    "lobby.notifyBody": "{name} would like to join the conversation.",
    "lobby.notifyAsk": "Notify me when someone is waiting",
    "lobby.notifyOn": "Notifications are on",
    "lobby.notifyDenied": "Notifications are blocked in the browser",
    "lobby.admit": "Let in",
    "lobby.deny": "Decline",
    "lobby.admitLabel": "Let in {name}",
    "lobby.denyLabel": "Decline {name}",
    "mod.mute": "Mute",
    "mod.muteLabel": "Mute {name}'s microphone",
    "mod.remove": "Remove",
    "mod.removeLabel": "Remove {name} from the conversation",
    "mod.mutedNote": "muted",

    "invite.open": "Dial in a partner",
    "invite.title": "Dial in a partner",
    "invite.type": "Type of organisation",
    "invite.organisation": "Organisation",
    "invite.name": "Person's name",
    "invite.rights": "Rights",
    "invite.minutes": "Valid (minutes)",
    "invite.waiting": "Waiting room first (you let the person in)",
    "invite.email": "E-mail address (optional)",
    "invite.emailHint": "We send the link there, with a calendar entry.",
    "invite.email.sent": "The invitation was e-mailed to {email}.",
    "invite.email.failed": "The e-mail could not be sent. Please pass the link on yourself.",
    "invite.email.disabled": "E-mail is not set up on this server. Please pass the link on yourself.",
    "qr.open": "QR code for the client",
    "qr.title": "Link for the client's own phone",
    "qr.text": "The client scans the code with their own phone's camera and joins the conversation with it.",
    "qr.alt": "QR code with the client's access link",
    "invite.submit": "Create invitation",
    "invite.ready": "Invitation created",
    "invite.pass": "Pass this link to the invited person. It works only once.",
    "invite.copy": "Copy",
    "invite.linkLabel": "Invitation link",
    "invite.copiedShort": "Copied ✓",
    "invite.expires": "Valid until {time}.",
    "invite.required": "Please enter the organisation and the name.",
    "partners.hint": "Type the first letters: partners from the directory are suggested.",
    "partners.list": "Suggestions from the partner directory",
    "partners.count.one": "1 suggestion. Choose with the arrow keys, take it with Enter.",
    "partners.count.many": "{count} suggestions. Choose with the arrow keys, take it with Enter.",
    "partners.filled": "The details for {name} are filled in. Please check them, then create the invitation.",
    "invite.delivery.queued": "The invitation is also being delivered automatically …",
    "invite.delivery.delivered": "The invitation was delivered automatically.",
    "invite.delivery.failed": "Automatic delivery failed. Please pass the link on yourself.",
    "org.pension_insurance": "Pension insurance",
    "org.chamber": "Chamber",
    "org.training_provider": "Training provider",
    "org.job_centre": "Job centre",
    "org.interpreter": "Interpreter",
    "org.other": "Other",
    "right.audio": "Sound",
    "right.video": "Picture",
    "right.screen": "Share screen",
    "right.see_client": "See the client's picture",
    "right.chat": "Chat",
    "chat.title": "Chat",
    "chat.note": "The chat is not kept after the call.",
    "chat.off": "The chat is switched off.",
    "chat.label": "Your message",
    "chat.placeholder": "Write a message …",
    "chat.send": "Send",
    "chat.allow": "Allow the chat",
    "chat.turnedOn": "The chat is on again.",
    "chat.turnedOff": "The chat was switched off.",
    "chat.from": "Message from {name}: {text}",
    "chat.buttonUnread": "Chat, {count} new messages",
    "dialog.cancel": "Cancel",
    "dialog.close": "Close",

    "end.button": "End for all",
    "end.title": "End the conversation for everyone?",
    "end.text": "Everyone is disconnected. After that, none of the links works.",
    "end.confirm": "End for all",

    "status.hostAway": "Your adviser is briefly disconnected. Please stay in the conversation.",
    "status.hostAway.partner": "The adviser is briefly disconnected. Please stay in the conversation.",
    "status.hostBack": "Your adviser is back.",
    "status.hostBack.partner": "The adviser is back.",
    "status.sessionEnding": "The conversation ends in {minutes} minutes.",
    "status.sessionEndingOne": "The conversation ends in one minute.",
    "status.sessionExtended": "The conversation was extended until {time}.",
    "status.mutedByHost": "Your adviser muted your microphone. Turn it back on when you want to speak.",
    "status.mutedByHost.partner": "The adviser muted your microphone. Turn it back on when you want to speak.",
    "status.videoMutedByHost": "Your adviser turned your camera off. Turn it back on if you like.",
    "status.videoMutedByHost.partner": "The adviser turned your camera off. Turn it back on if you like.",
    "status.someoneWaiting": "{name} is in the waiting room.",
    "status.locked": "The conversation is locked.",
    "status.unlocked": "The conversation is no longer locked.",
    "status.admitted": "You were let in.",

    "ended.endedTitle": "The conversation has ended.",
    "ended.removedTitle": "You were removed from the conversation.",
    "ended.deniedTitle": "You were not let in.",
    "ended.replacedTitle": "The conversation goes on in another window.",

    "role.caseworker": "Adviser",
    "role.client": "Client",
    "role.caseworkerOnSite": "Adviser with the client on site",
    "role.partner": "Partner",
    "role.unknown": "Participant",

    "error.token_missing": "The access link is missing. Please open your personal link.",
    "error.token_malformed": "The access link is invalid or incomplete. Please open the link again exactly as you received it.",
    "error.token_bad_signature": "The access link is invalid. Please open the link again exactly as you received it.",
    "error.token_bad_algorithm": "The access link is invalid. Please open the link again exactly as you received it.",
    "error.token_expired": "The access link has expired. Please ask your adviser for a new link.",
    "error.token_expired.partner": "The invitation link has expired. The person who invited you can send you a new one.",
    "error.token_expired.caseworker": "The access link has expired. Please set up the conversation again.",
    "error.token_not_yet_valid":
      "The access link is not valid yet. Please try again at the agreed time.",
    "error.token_claims_missing": "The access link is incomplete. Please open the link again exactly as you received it.",
    "error.token_wrong_audience": "The access link does not belong to this service.",
    "error.token_wrong_issuer": "The access link was not issued by this service.",
    "error.token_wrong_room": "The access link is not valid for this conversation.",
    "error.token_revoked": "The access link has been withdrawn and is no longer valid.",
    "error.invite_used": "This invitation has already been used; it works only once. The person who invited you can send you a new one.",
    "error.api_key_missing": "The API key is missing.",
    "error.api_key_invalid": "The API key is invalid.",
    "error.forbidden": "Your access does not allow this.",
    "error.not_found": "The conversation was not found. Please check the link.",
    "error.bad_request": "Some details were missing or not right.",
    "error.payload_too_large": "That is too much at once. Please shorten the text.",
    "error.too_many_requests": "Too many requests. Please wait a moment.",
    "error.room_closed": "This conversation has ended. The link no longer works.",
    "error.room_full": "The conversation is full. No one else can join.",
    "error.unknown_event": "The page sent an unknown message. Please reload.",
    "error.invalid_payload": "The page sent malformed data. Please reload.",
    "error.sdp_invalid": "Picture and sound could not be connected. Please reload the page.",
    "error.internal": "The server ran into an error. Please try again.",
    "error.lobby_denied": "You were not let into the conversation. If you have questions, please contact the agency.",
    "error.lobby_denied.partner": "You were not let into the conversation. If you have questions, please contact the person who invited you.",
    "error.replaced": "You opened the conversation in another window or tab. It continues there.",
    "error.wrong_node": "The conversation runs on another server – connecting you there …",
    "error.unavailable": "The service is briefly unavailable. Please try again in a moment.",
    "error.node_draining": "The conversation is moving to another server for maintenance.",
    "error.server_shutdown": "The server is restarting – reconnecting …",
    "error.chat_disabled": "The chat is switched off in this conversation.",
    "error.partner_not_found": "This partner organisation is not (or no longer) in the directory.",
    "error.partner_exists": "A partner organisation with this name is already in the directory.",
    "error.consent_required": "Please confirm the note about the conversation first (the box above “Join the conversation”).",
    "error.removed": "Your adviser removed you from the conversation.",
    "error.removed.partner": "The adviser removed you from the conversation.",
    "error.room_ended": "Your adviser ended the conversation for everyone.",
    "error.room_ended.partner": "The adviser ended the conversation for everyone.",
    "error.room_ended.caseworker": "You ended the conversation for everyone. The links no longer work.",
    "error.session_expired": "The time booked for this conversation is over.",
    "error.room_locked": "The conversation is locked. No one else is let in right now.",
    "error.seat_taken":
      "This link is in the conversation on another device right now. Please use that device or ask your adviser.",
    "error.seat_taken.partner":
      "This link is in the conversation on another device right now. Please use that device or ask the adviser.",
    "error.seat_taken.caseworker": "This link is in the conversation on another device right now. Please use that device.",
    "error.invite_revoked": "This invitation has been withdrawn.",
    "error.timeout": "The server does not answer. Please check your connection.",
    "error.media": "Picture and sound could not be connected.",
    "error.unknown": "An unknown error occurred.",
  },
};

let current = initialLang();
const listeners = new Set();

function initialLang() {
  let stored = null;
  try {
    stored = localStorage.getItem(STORAGE_KEY);
  } catch {
    // storage may be disabled; fall back to German
  }
  return LANGS.includes(stored) ? stored : "de";
}

export function lang() {
  return current;
}

export function t(key, vars = {}) {
  const text = STRINGS[current][key] ?? STRINGS.de[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

/**
 * Human message for a server error: our own text when we know the code, else the
 * server's. With `role`, the words for that person where they differ (`error.code.role`):
 * a partner has no "Ihre Beratungsperson", and the caseworker ended the session themselves.
 */
export function errorMessage(code, serverMessage, role = null) {
  const key = `error.${code}`;
  if (!code || !(key in STRINGS[current])) return serverMessage || t("error.unknown");
  return role ? tRole(key, role) : t(key);
}

/** The text of `key` as said to someone in `role` (`key.role`), else the general one. */
export function tRole(key, role, vars = {}) {
  const specific = `${key}.${role}`;
  return t(specific in STRINGS[current] || specific in STRINGS.de ? specific : key, vars);
}

export function roleLabel(role) {
  const key = `role.${role}`;
  return key in STRINGS[current] ? t(key) : t("role.unknown");
}

export function setLang(next) {
  if (!LANGS.includes(next)) return;
  current = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // not fatal: the choice just is not remembered
  }
  applyStatic();
  for (const fn of listeners) fn(next);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

/** Fill elements marked with data-i18n (text), data-i18n-aria (aria-label), data-i18n-title. */
export function applyStatic(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-aria]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAria));
  }
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
}
